"""Subject -> category tables for the aggregate scores.

MMLU: the SUBJECTS table of lm-evaluation-harness (lm_eval/tasks/mmlu/_generate_configs.py),
which matches OpenCompass' mmlu summary groups (configs/summarizers/groups/mmlu.py).
Hendrycks' original categories.py differs only in putting `anatomy` under "other".

C-Eval: the category column of SJTU-LIT/ceval subject_mapping.json (the same table is
`ceval_subject_mapping` in OpenCompass' configs/datasets/ceval/*.py); "hard" is the
C-Eval Hard subset named in the C-Eval paper.
"""
from __future__ import annotations

MMLU_CATEGORIES: dict[str, list[str]] = {
    "stem": [
        "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry",
        "college_computer_science", "college_mathematics", "college_physics",
        "computer_security", "conceptual_physics", "electrical_engineering",
        "elementary_mathematics", "high_school_biology", "high_school_chemistry",
        "high_school_computer_science", "high_school_mathematics", "high_school_physics",
        "high_school_statistics", "machine_learning",
    ],
    "humanities": [
        "formal_logic", "high_school_european_history", "high_school_us_history",
        "high_school_world_history", "international_law", "jurisprudence",
        "logical_fallacies", "moral_disputes", "moral_scenarios", "philosophy",
        "prehistory", "professional_law", "world_religions",
    ],
    "social_sciences": [
        "econometrics", "high_school_geography", "high_school_government_and_politics",
        "high_school_macroeconomics", "high_school_microeconomics", "high_school_psychology",
        "human_sexuality", "professional_psychology", "public_relations",
        "security_studies", "sociology", "us_foreign_policy",
    ],
    "other": [
        "business_ethics", "clinical_knowledge", "college_medicine", "global_facts",
        "human_aging", "management", "marketing", "medical_genetics", "miscellaneous",
        "nutrition", "professional_accounting", "professional_medicine", "virology",
    ],
}

CEVAL_CATEGORIES: dict[str, list[str]] = {
    "stem": [
        "computer_network", "operating_system", "computer_architecture",
        "college_programming", "college_physics", "college_chemistry",
        "advanced_mathematics", "probability_and_statistics", "discrete_mathematics",
        "electrical_engineer", "metrology_engineer", "high_school_mathematics",
        "high_school_physics", "high_school_chemistry", "high_school_biology",
        "middle_school_mathematics", "middle_school_biology", "middle_school_physics",
        "middle_school_chemistry", "veterinary_medicine",
    ],
    "social_science": [
        "college_economics", "business_administration", "marxism", "mao_zedong_thought",
        "education_science", "teacher_qualification", "high_school_politics",
        "high_school_geography", "middle_school_politics", "middle_school_geography",
    ],
    "humanities": [
        "modern_chinese_history", "ideological_and_moral_cultivation", "logic", "law",
        "chinese_language_and_literature", "art_studies", "professional_tour_guide",
        "legal_professional", "high_school_chinese", "high_school_history",
        "middle_school_history",
    ],
    "other": [
        "civil_servant", "sports_science", "plant_protection", "basic_medicine",
        "clinical_medicine", "urban_and_rural_planner", "accountant", "fire_engineer",
        "environmental_impact_assessment_engineer", "tax_accountant", "physician",
    ],
    "hard": [
        "advanced_mathematics", "discrete_mathematics", "probability_and_statistics",
        "college_chemistry", "college_physics", "high_school_mathematics",
        "high_school_chemistry", "high_school_physics",
    ],
}

# Chinese subject names from the same subject_mapping.json; OpenCompass' C-Eval prompt
# header reads "以下是中国关于{中文名}考试的单项选择题，请选出其中的正确答案。"
CEVAL_CHINESE_NAMES: dict[str, str] = {
    "computer_network": "计算机网络", "operating_system": "操作系统",
    "computer_architecture": "计算机组成", "college_programming": "大学编程",
    "college_physics": "大学物理", "college_chemistry": "大学化学",
    "advanced_mathematics": "高等数学", "probability_and_statistics": "概率统计",
    "discrete_mathematics": "离散数学", "electrical_engineer": "注册电气工程师",
    "metrology_engineer": "注册计量师", "high_school_mathematics": "高中数学",
    "high_school_physics": "高中物理", "high_school_chemistry": "高中化学",
    "high_school_biology": "高中生物", "middle_school_mathematics": "初中数学",
    "middle_school_biology": "初中生物", "middle_school_physics": "初中物理",
    "middle_school_chemistry": "初中化学", "veterinary_medicine": "兽医学",
    "college_economics": "大学经济学", "business_administration": "工商管理",
    "marxism": "马克思主义基本原理", "mao_zedong_thought": "毛泽东思想和中国特色社会主义理论体系概论",
    "education_science": "教育学", "teacher_qualification": "教师资格",
    "high_school_politics": "高中政治", "high_school_geography": "高中地理",
    "middle_school_politics": "初中政治", "middle_school_geography": "初中地理",
    "modern_chinese_history": "近代史纲要", "ideological_and_moral_cultivation": "思想道德修养与法律基础",
    "logic": "逻辑学", "law": "法学", "chinese_language_and_literature": "中国语言文学",
    "art_studies": "艺术学", "professional_tour_guide": "导游资格", "legal_professional": "法律职业资格",
    "high_school_chinese": "高中语文", "high_school_history": "高中历史",
    "middle_school_history": "初中历史", "civil_servant": "公务员", "sports_science": "体育学",
    "plant_protection": "植物保护", "basic_medicine": "基础医学", "clinical_medicine": "临床医学",
    "urban_and_rural_planner": "注册城乡规划师", "accountant": "注册会计师",
    "fire_engineer": "注册消防工程师", "environmental_impact_assessment_engineer": "环境影响评价工程师",
    "tax_accountant": "税务师", "physician": "医师资格",
}

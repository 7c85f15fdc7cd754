"""Write raveval/demo_data/: tiny hand-written datasets in the MMLU, C-Eval and GSM8K
layouts, so examples and tests run without any benchmark download.

All questions below were written for this project (simple general knowledge and
arithmetic); none is taken from a benchmark. Run: python scripts/make_demo_data.py
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "raveval" / "demo_data"

# (question, A, B, C, D, answer); the first 3 of each subject are the dev split.
MMLU = {
    "elementary_mathematics": [
        ("What is 7 + 5?", "10", "11", "12", "13", "C"),
        ("What is 9 x 3?", "27", "21", "24", "30", "A"),
        ("Which number is even?", "7", "13", "21", "16", "D"),
        ("What is 15 - 8?", "6", "7", "8", "9", "B"),
        ("How many minutes are in one hour?", "60", "100", "30", "24", "A"),
        ("What is half of 18?", "6", "8", "9", "12", "C"),
        ("Which fraction equals 0.25?", "1/2", "1/3", "1/5", "1/4", "D"),
        ("What is 6 x 6?", "36", "30", "42", "32", "A"),
        ("How many sides does a hexagon have?", "5", "6", "7", "8", "B"),
        ("What is 100 divided by 4?", "20", "40", "25", "50", "C"),
        ("Which number is prime?", "9", "15", "21", "11", "D"),
    ],
    "high_school_geography": [
        ("Which is the largest ocean on Earth?", "Atlantic", "Indian", "Pacific", "Arctic", "C"),
        ("On which continent is Egypt?", "Africa", "Asia", "Europe", "South America", "A"),
        ("What line divides Earth into northern and southern hemispheres?",
         "Prime meridian", "Equator", "Tropic of Cancer", "Date line", "B"),
        ("What is the capital of Japan?", "Osaka", "Kyoto", "Seoul", "Tokyo", "D"),
        ("Which river flows through Paris?", "Seine", "Thames", "Rhine", "Danube", "A"),
        ("Which desert is the largest hot desert?", "Gobi", "Kalahari", "Sahara", "Mojave", "C"),
        ("Which country has the largest land area?", "Canada", "Russia", "China", "Brazil", "B"),
        ("Mount Everest lies in which mountain range?", "Andes", "Alps", "Rockies", "Himalayas", "D"),
        ("What is the capital of Australia?", "Sydney", "Canberra", "Melbourne", "Perth", "B"),
        ("Which continent has the most countries?", "Africa", "Europe", "Asia", "Oceania", "A"),
        ("What do we call a large mass of moving ice on land?", "Delta", "Dune", "Glacier", "Fjord", "C"),
    ],
    "world_religions": [
        ("What is the holy book of Islam?", "Torah", "Quran", "Vedas", "Tripitaka", "B"),
        ("In which country was Siddhartha Gautama, the Buddha, born?",
         "China", "Japan", "Nepal", "Thailand", "C"),
        ("Which religion celebrates Diwali as a festival of lights?",
         "Hinduism", "Christianity", "Judaism", "Shinto", "A"),
        ("Which day is the Jewish Sabbath?", "Monday", "Wednesday", "Sunday", "Saturday", "D"),
        ("Which city is the holiest in Islam?", "Mecca", "Cairo", "Istanbul", "Baghdad", "A"),
        ("What is the sacred text of Sikhism called?",
         "Avesta", "Guru Granth Sahib", "Analects", "Bhagavad Gita", "B"),
        ("Which festival celebrates the birth of Jesus?", "Easter", "Pentecost", "Christmas", "Lent", "C"),
        ("Shinto is a religion native to which country?", "Korea", "India", "Vietnam", "Japan", "D"),
        ("Which religion teaches the Four Noble Truths?", "Buddhism", "Islam", "Jainism", "Taoism", "A"),
        ("What is the Jewish festival of lights called?", "Passover", "Hanukkah", "Purim", "Sukkot", "B"),
        ("Which text is central to Taoism?", "Tao Te Ching", "Upanishads", "Talmud", "Quran", "A"),
    ],
}

# (question, A, B, C, D, answer, explanation); the first 3 are the dev split (with explanation).
CEVAL = {
    "high_school_physics": [
        ("物体不受外力作用时，将保持什么状态？", "加速运动", "静止或匀速直线运动", "圆周运动", "减速运动", "B",
         "由牛顿第一定律可知，物体不受外力时保持静止或匀速直线运动状态。"),
        ("国际单位制中，力的单位是什么？", "焦耳", "瓦特", "牛顿", "帕斯卡", "C", "力的单位是牛顿。"),
        ("质量为2 kg的物体受到10 N的合力，加速度为多少？", "5 m/s²", "20 m/s²", "2 m/s²", "12 m/s²", "A",
         "由 a = F/m 得 a = 10/2 = 5 m/s²。"),
        ("功率的国际单位是什么？", "牛顿", "焦耳", "伏特", "瓦特", "D", ""),
        ("一辆车以10 m/s匀速行驶5 s，通过的路程是多少？", "2 m", "15 m", "50 m", "500 m", "C", ""),
        ("真空中光速约为多少？", "3×10⁸ m/s", "3×10⁵ m/s", "340 m/s", "3×10⁶ m/s", "A", ""),
        ("电阻为5 Ω的导体两端电压为10 V，通过的电流是多少？", "50 A", "2 A", "0.5 A", "15 A", "B", ""),
        ("下列哪种能量属于动能？", "拉伸的弹簧", "举高的重物", "充电的电池", "运动的汽车", "D", ""),
        ("声音在下列哪种情况下无法传播？", "真空", "空气", "水", "钢铁", "A", ""),
    ],
    "modern_chinese_history": [
        ("第一次鸦片战争开始于哪一年？", "1840年", "1860年", "1894年", "1911年", "A",
         "第一次鸦片战争于1840年爆发。"),
        ("辛亥革命爆发于哪一年？", "1898年", "1905年", "1911年", "1919年", "C", "辛亥革命于1911年爆发。"),
        ("五四运动发生在哪一年？", "1915年", "1919年", "1921年", "1927年", "B", "五四运动发生在1919年。"),
        ("中国共产党第一次全国代表大会召开于哪一年？", "1919年", "1927年", "1931年", "1921年", "D", ""),
        ("中华人民共和国成立于哪一年？", "1945年", "1949年", "1950年", "1937年", "B", ""),
        ("第一次鸦片战争后签订的条约是哪一个？", "《南京条约》", "《马关条约》", "《辛丑条约》", "《北京条约》", "A", ""),
        ("中国人民抗日战争全面爆发的标志是哪一事件？", "九一八事变", "西安事变", "七七事变", "一二八事变", "C", ""),
        ("甲午战争后清政府与日本签订的条约是哪一个？", "《南京条约》", "《天津条约》", "《辛丑条约》", "《马关条约》", "D", ""),
        ("洋务运动的口号之一是什么？", "自强", "民主", "科学", "共和", "A", ""),
    ],
}

# (question, reasoning lines, final number); the first 4 are train, the rest test.
GSM8K = [
    ("Lena buys 3 notebooks at $4 each. How many dollars does she spend?",
     ["Each notebook costs $4, so 3 notebooks cost 3 * 4 = <<3*4=12>>12 dollars."], 12),
    ("A garden has 5 rows of tulips with 8 tulips in each row. 6 tulips are picked. How many are left?",
     ["There are 5 * 8 = <<5*8=40>>40 tulips.", "After picking, 40 - 6 = <<40-6=34>>34 are left."], 34),
    ("Omar reads 15 pages a day. How many pages does he read in 2 weeks?",
     ["Two weeks have 2 * 7 = <<2*7=14>>14 days.", "He reads 15 * 14 = <<15*14=210>>210 pages."], 210),
    ("A box holds 24 crayons. Mia puts 4 aside and shares the rest equally among herself "
     "and 4 friends. How many crayons does each person get?",
     ["There are 4 + 1 = <<4+1=5>>5 people.", "24 - 4 = <<24-4=20>>20 crayons are shared.",
      "Each gets 20 / 5 = <<20/5=4>>4 crayons."], 4),
    ("Sam has 9 apples and gets 6 more. How many apples does he have?",
     ["Sam has 9 + 6 = <<9+6=15>>15 apples."], 15),
    ("A bus carries 42 people. At a stop 17 get off and 9 get on. How many people are on the bus now?",
     ["After 17 get off there are 42 - 17 = <<42-17=25>>25.", "Then 25 + 9 = <<25+9=34>>34 people."], 34),
    ("Tickets cost $7 for adults and $4 for children. What do 2 adults and 3 children pay?",
     ["Adults pay 2 * 7 = <<2*7=14>>14 dollars.", "Children pay 3 * 4 = <<3*4=12>>12 dollars.",
      "Together 14 + 12 = <<14+12=26>>26 dollars."], 26),
    ("A baker makes 120 rolls and packs them in bags of 8. How many bags does he fill?",
     ["He fills 120 / 8 = <<120/8=15>>15 bags."], 15),
    ("Nora saves $25 each month. How much has she saved after one year?",
     ["A year has 12 months, so she saves 25 * 12 = <<25*12=300>>300 dollars."], 300),
    ("A rectangle is 9 meters long and 4 meters wide. What is its perimeter in meters?",
     ["The perimeter is 2 * (9 + 4) = <<2*(9+4)=26>>26 meters."], 26),
    ("Leo runs 3 km on weekdays and 5 km on each weekend day. How many km does he run in a week?",
     ["On weekdays he runs 5 * 3 = <<5*3=15>>15 km.", "On the weekend he runs 2 * 5 = <<2*5=10>>10 km.",
      "In total 15 + 10 = <<15+10=25>>25 km."], 25),
    ("A shop sells 1,000 pens a month. How many pens does it sell in 3 months?",
     ["It sells 1000 * 3 = <<1000*3=3000>>3,000 pens."], 3000),
    ("A pizza is cut into 12 slices. Ann eats 3 and Ben eats twice as many as Ann. How many slices remain?",
     ["Ben eats 3 * 2 = <<3*2=6>>6 slices.", "Together they eat 3 + 6 = <<3+6=9>>9.",
      "So 12 - 9 = <<12-9=3>>3 slices remain."], 3),
    ("A train travels 60 km each hour. How far does it go in 4 and a half hours?",
     ["In 4.5 hours it goes 60 * 4.5 = <<60*4.5=270>>270 km."], 270),
    ("Kim had $50. She spent $18 on a book and $7 on lunch. How much money is left?",
     ["She spent 18 + 7 = <<18+7=25>>25 dollars.", "She has 50 - 25 = <<50-25=25>>25 dollars left."], 25),
    ("There are 30 students and each needs 2 pencils. Pencils come in packs of 10. How many packs are needed?",
     ["They need 30 * 2 = <<30*2=60>>60 pencils.", "That is 60 / 10 = <<60/10=6>>6 packs."], 6),
]


def write_csv(path: Path, rows, header=None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        if header:
            w.writerow(header)
        w.writerows(rows)


def main() -> None:
    for subject, rows in MMLU.items():
        write_csv(OUT / "mmlu" / "dev" / f"{subject}_dev.csv", rows[:3])
        write_csv(OUT / "mmlu" / "test" / f"{subject}_test.csv", rows[3:])
    for subject, rows in CEVAL.items():
        dev = [(i, *r) for i, r in enumerate(rows[:3])]
        val = [(i, *r[:6]) for i, r in enumerate(rows[3:])]
        write_csv(OUT / "ceval" / "dev" / f"{subject}_dev.csv", dev,
                  ["id", "question", "A", "B", "C", "D", "answer", "explanation"])
        write_csv(OUT / "ceval" / "val" / f"{subject}_val.csv", val,
                  ["id", "question", "A", "B", "C", "D", "answer"])
    (OUT / "gsm8k").mkdir(parents=True, exist_ok=True)
    for name, part in (("train", GSM8K[:4]), ("test", GSM8K[4:])):
        with open(OUT / "gsm8k" / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for question, steps, number in part:
                answer = "\n".join(steps) + f"\n#### {number}"
                f.write(json.dumps({"question": question, "answer": answer}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()

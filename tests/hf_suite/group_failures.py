"""Group the failures in results/MODE.log by their first `E ` line: python group_failures.py [MODE]"""
import collections
import re
import sys

mode = sys.argv[1] if len(sys.argv) > 1 else "optimize"
groups, test = collections.defaultdict(list), None
for line in open(f"results/{mode}.log", encoding="utf-8", errors="replace"):
    head = re.match(r"^_{3,} (\S+) _{3,}$", line)
    if head:
        test = head.group(1)
    elif test and line.startswith("E ") and line[1:].strip():
        msg = re.sub(r"\d+(\.\d+)?(e-?\d+)?", "#", line[1:].strip())[:120]
        groups[msg].append(test)
        test = None
for msg, tests in sorted(groups.items(), key=lambda kv: -len(kv[1])):
    print(f"[{len(tests)}] {msg}\n      " + "\n      ".join(tests))

"""Generate a subscriber import file (CSV or JSON Lines) for `chf subscriber import` benchmarks.

Identities are in test ranges (MCC 001 = test network), never real people: IMSI 00101 + 10 digits, MSISDN
99 + 10 digits, ICCID 8900101 + 12 digits. Lines are spread round-robin over ACCOUNTS accounts named
`<prefix>0`..`<prefix>N-1`.

    python -m loadtest.gen_import /tmp/lines.csv --lines 1000000 --accounts 1000 --plan prepaid-s
"""

from __future__ import annotations

import argparse
import json


def generate(path: str, lines: int, accounts: int, plan: str | None, fmt: str, prefix: str, start: int = 0) -> None:
    with open(path, "w", encoding="utf-8", newline="") as f:
        if fmt == "csv":
            f.write("imsi,msisdn,iccid,account,plan,state\n")
        chunk: list[str] = []
        for i in range(start, start + lines):
            imsi = f"00101{i:010d}"
            msisdn = f"99{i:010d}"
            iccid = f"8900101{i:012d}"
            account = f"{prefix}{i % accounts}"
            if fmt == "csv":
                chunk.append(f"{imsi},{msisdn},{iccid},{account},{plan or ''},active\n")
            else:
                row = {"imsi": imsi, "msisdn": msisdn, "iccid": iccid, "account": account, "state": "active"}
                if plan:
                    row["plan"] = plan
                chunk.append(json.dumps(row) + "\n")
            if len(chunk) >= 10_000:
                f.write("".join(chunk))
                chunk.clear()
        f.write("".join(chunk))


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("path")
    p.add_argument("--lines", type=int, default=1_000_000)
    p.add_argument("--accounts", type=int, default=1000)
    p.add_argument("--account-prefix", default="mig-")
    p.add_argument("--plan", default="prepaid-s", help="'' for no plan")
    p.add_argument("--format", choices=("csv", "jsonl"), default="csv")
    a = p.parse_args(argv)
    generate(a.path, a.lines, a.accounts, a.plan or None, a.format, a.account_prefix)


if __name__ == "__main__":
    main()

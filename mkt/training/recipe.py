"""``python -m mkt.training.recipe --data D --out O [--field value ...]``: train with any knob.

`mkt train` exposes the common options; this runner takes every ``TrainConfig`` field
(``--text-weight 1 --ema 0.998 --split 8 ...``) so recipe experiments need no CLI changes.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import typing


def main(argv: list[str] | None = None) -> dict:
    from mkt.training.train import TrainConfig, train

    ap = argparse.ArgumentParser(description=__doc__)
    hints = typing.get_type_hints(TrainConfig)
    for f in dataclasses.fields(TrainConfig):
        if f.name == "command":
            continue
        t = hints[f.name]
        flag = "--" + f.name.replace("_", "-")
        if t is bool:
            ap.add_argument(flag, type=lambda v: v.lower() in ("1", "true", "yes"),
                            default=f.default)
        else:
            base = [a for a in typing.get_args(t) if a is not type(None)] or [t]
            conv = base[0] if base[0] in (int, float, str) else str

            def parse(v, conv=conv):
                return None if v.lower() == "none" else conv(v)

            default = f.default if f.default is not dataclasses.MISSING else None
            ap.add_argument(flag, type=parse, default=default,
                            required=f.default is dataclasses.MISSING)
    args = vars(ap.parse_args(argv))
    cmd = "python -m mkt.training.recipe " + " ".join(sys.argv[1:] if argv is None else argv)
    metrics = train(TrainConfig(**args, command=cmd))
    print(json.dumps({k: v for k, v in metrics.items() if k != "history"}, indent=1))
    return metrics


if __name__ == "__main__":
    main()

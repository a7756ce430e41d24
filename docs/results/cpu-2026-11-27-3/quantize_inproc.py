import time, sys
t = time.time()
from pathlib import Path
from evalgate import cli
from evalgate.repro import commit
import yaml
vs = [v for v in yaml.safe_load(open("params.yaml"))["variants"]]
for v in vs:
    cli.quantize(variant=v, out=Path("checkpoints") / v, gguf=Path("gguf"), params=cli.PARAMS)
commit([f"quantize@{v}" for v in vs])
print(f"in-process: {time.time() - t:.1f} s for {len(vs)} stages (incl. imports)")

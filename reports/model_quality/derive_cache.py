"""Derive the split-11 stem cache from the split-8 one by running blocks 8..10 in ONNX Runtime."""
import json, os, sys, time
from pathlib import Path
import numpy as np, torch
from torch import nn
from mkt.training.train import TrainConfig, load_train_data, stem_cache_name
from mkt.training.models import build_model, get_arch
from mkt.training.features import ort_session, _cache_key
torch.set_num_threads(2)
src_split, dst_split = int(sys.argv[2]) if len(sys.argv) > 2 else 8, int(sys.argv[1])
cache_dir = Path("runs/cache")
cfg8 = TrainConfig(data="work/data", out="", split=src_split, n_aug=3)
cfgd = TrainConfig(data="work/data", out="", split=dst_split, n_aug=3)
data = load_train_data(cfg8)
spec = get_arch("efficientnet_lite0")
m8 = build_model("efficientnet_lite0", 13, pretrained="imagenet", split=src_split)
md = build_model("efficientnet_lite0", 13, pretrained="imagenet", split=dst_split)
mid = nn.Sequential(*m8.tail.blocks[: dst_split - src_split]).eval()
z = np.load(cache_dir / stem_cache_name(cfg8))
acts, photo, view = z["acts"], z["photo"], z["view"]
sess = ort_session(mid, torch.zeros(1, *acts.shape[1:]), threads=2)
t = time.time(); out = []
for i in range(0, len(acts), 256):
    out.append(sess.run(None, {"x": acts[i:i + 256].astype(np.float32)})[0].astype(np.float16))
out = np.concatenate(out)
print("derived", out.shape, round(time.time() - t, 1), "s", flush=True)
# check against the direct stem on a few eval views
from mkt.training.features import load_uint8, normalise
rows = [0, 1, 2]
first = [int(np.flatnonzero((photo == r) & (view == 0))[0]) for r in rows]
x = normalise(np.stack([load_uint8(data.paths[r], 224) for r in rows]), spec.mean, spec.std)
with torch.no_grad():
    direct = md.stem.eval()(torch.from_numpy(x)).numpy()
print("max abs diff vs direct stem", float(np.abs(direct - out[first].astype(np.float32)).max()),
      "scale", float(np.abs(direct).max()), flush=True)
key = _cache_key(md.stem, data.paths, data.split == "train", 3, 224, 0)
dst = cache_dir / stem_cache_name(cfgd)
tmp = Path(str(dst) + ".tmp.npz")
np.savez(tmp, acts=out, photo=photo, view=view)
os.replace(tmp, dst)
dst.with_suffix(".json").write_text(json.dumps({"key": key, "derived_from": stem_cache_name(cfg8)}))
print("wrote", dst, round(time.time() - t, 1), "s", flush=True)

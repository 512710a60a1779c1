import time, torch
from pathlib import Path
from mkt.training.train import TrainConfig, load_train_data, stem_cache_name
from mkt.training.models import build_model, get_arch
from mkt.training.features import build_stem_cache
torch.set_num_threads(2)
cfg = TrainConfig(data="work/data", out="runs/cache", split=8, n_aug=3, progress=False)
data = load_train_data(cfg)
spec = get_arch(cfg.arch)
m = build_model(cfg.arch, 13, pretrained="imagenet", split=8)
t=time.time()
c = build_stem_cache(m.stem, data.paths, data.split == "train", spec.mean, spec.std, spec.input_size, cfg.n_aug, Path("runs/cache")/stem_cache_name(cfg), cfg.seed, progress=False)
print("done", c.acts.shape, time.time()-t, flush=True)

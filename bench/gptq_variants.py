"""GPTQ variants on SmolLM2-135M: calibrate one way, print (and append to --results) the perplexity.

The driver behind bench/results/gptq_variants.{md,json}, e.g.
    python bench/gptq_variants.py --tag p3_refine_sf2 --refine --extra '{"scale_fits": 2}'
(``--extra``: further calibrate_model keywords as JSON; 32 x 512 tokens of WikiText-2 valid, first
``--windows`` windows of 2048 of WikiText-2 raw test). Run from the repository root."""
import argparse, json, time, resource, sys
import torch
from pathlib import Path
from potkernels.format.config import PoTConfig, IntConfig
from potkernels.models import load_model
from calibration.calibrate import calibrate_model
from calibration.data import get_calibration_ids
from calibration.eval import perplexity, read_text, tokenize_text

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
p.add_argument("--bits", type=int, default=3); p.add_argument("--g", type=int, default=128)
p.add_argument("--kind", default="pot"); p.add_argument("--samples", type=int, default=32)
p.add_argument("--seq-len", type=int, default=512); p.add_argument("--refine", action="store_true")
p.add_argument("--ts", action="store_true"); p.add_argument("--damp", type=float, default=0.01)
p.add_argument("--epochs", type=int, default=4); p.add_argument("--threads", type=int, default=1)
# the refine settings these variants were measured with (before the CLI defaults became 1 epoch, lr 2e-3, 1 window)
p.add_argument("--lr", type=float, default=1e-3); p.add_argument("--batch-size", type=int, default=2)
p.add_argument("--windows", type=int, default=4); p.add_argument("--extra", default="{}")
p.add_argument("--tag", required=True)
p.add_argument("--results", default="gptq_variants.jsonl", help="JSON-lines file to append to")
a = p.parse_args()
torch.set_num_threads(a.threads)
model, tok = load_model("smollm2", device="cpu")
cfg = (PoTConfig if a.kind == "pot" else IntConfig)(bits=a.bits, group_size=a.g)
ids = get_calibration_ids(str(DATA / "wikitext-2/valid.txt"), tok, a.samples, a.seq_len, seed=0, model=model)
t0 = time.perf_counter()
calibrate_model(model, cfg, ids, "gptq", refine=a.refine, damp=a.damp, true_sequential=a.ts, epochs=a.epochs,
                lr=a.lr, batch_size=a.batch_size,
                act_weighted=(a.kind == "pot"), progress=False, **json.loads(a.extra))
tc = time.perf_counter() - t0
ev = tokenize_text(read_text(str(DATA / "wikitext-2-raw/wiki.test.raw")), tok)
r = perplexity(model, ev, 2048, max_windows=a.windows, progress=False)
out = dict(vars(a), calib_s=tc, ppl=r["ppl"], windows=r["windows"],
           rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(out))
with open(a.results, "a") as f:
    f.write(json.dumps(out) + "\n")

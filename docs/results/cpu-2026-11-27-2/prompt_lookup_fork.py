# Prompt-lookup generation row by row on 2 threads against split between this process and one forked child
# (1 thread each), on the CPU default's fixture and workload. Run from a finished clone: python prompt_lookup_fork.py
# Output (2026-11-27, this 2-core Xeon): seq2 3.72 s, fork2x1 2.71 s, seq2 3.38 s, fork2x1 2.62 s; outputs identical (hash 69012551).
import time, json, os, pickle, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained("fixtures/model").eval()
tok = AutoTokenizer.from_pretrained("fixtures/model")
reqs = [json.loads(l) for l in open("data/workload.jsonl")]
prompts = [r["prompt"] for r in reqs][:48] * 3
def one(p):
    enc = tok(p, return_tensors="pt")
    with torch.no_grad():
        return m.generate(**enc, max_new_tokens=64, do_sample=False, prompt_lookup_num_tokens=10,
                          pad_token_id=tok.pad_token_id)[0].tolist()
torch.set_num_threads(2); one(prompts[0])
def forked(ps):
    half = len(ps) // 2
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        torch.set_num_threads(1)
        data = pickle.dumps([one(p) for p in ps[half:]])
        with os.fdopen(w, "wb") as f: f.write(data)
        os._exit(0)
    os.close(w)
    torch.set_num_threads(1)
    mine = [one(p) for p in ps[:half]]
    with os.fdopen(r, "rb") as f: theirs = pickle.loads(f.read())
    os.waitpid(pid, 0)
    torch.set_num_threads(2)
    return mine + theirs
for mode in ("seq2", "fork2x1", "seq2", "fork2x1"):
    t = time.perf_counter()
    outs = [one(p) for p in prompts] if mode == "seq2" else forked(prompts)
    print(mode, round(time.perf_counter() - t, 2), "s", len(outs), hash(str(outs)) % 10**8, flush=True)

import time, json, torch
from concurrent.futures import ThreadPoolExecutor
from transformers import AutoModelForCausalLM, AutoTokenizer
m = AutoModelForCausalLM.from_pretrained("/tmp/rb2/fixtures/model").eval()
tok = AutoTokenizer.from_pretrained("/tmp/rb2/fixtures/model")
reqs = [json.loads(l) for l in open("/tmp/rb2/data/workload.jsonl")]
prompts = [r["prompt"] for r in reqs][:48] * 3
def one(p):
    enc = tok(p, return_tensors="pt")
    with torch.no_grad():
        return m.generate(**enc, max_new_tokens=64, do_sample=False, prompt_lookup_num_tokens=10,
                          pad_token_id=tok.pad_token_id)[0].tolist()
one(prompts[0])
for mode in ("seq2", "par2x1", "seq2", "par2x1"):
    t = time.perf_counter()
    if mode == "seq2":
        torch.set_num_threads(2); outs = [one(p) for p in prompts]
    else:
        torch.set_num_threads(1)
        with ThreadPoolExecutor(2) as ex: outs = list(ex.map(one, prompts))
        torch.set_num_threads(2)
    print(mode, round(time.perf_counter() - t, 2), "s", len(outs), hash(str(outs)) % 10**8, flush=True)

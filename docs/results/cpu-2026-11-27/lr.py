"""Train the CPU fixture's target with overrides; print train time and held-out accuracies."""
import json, sys, time, yaml, torch
sys.path.insert(0, "/work/main")
from evalgate.toymodel import corpus_and_tokenizer
from evalgate.toymodel.train import new_model, train, exact_match, eos_stop_share
import math
cfg = yaml.safe_load(open("/work/main/conf/fixture/cpu.yaml"))
over = dict(a.split("=") for a in sys.argv[1:])
name = over.pop("model", "target")
c = dict(cfg[name])
for k, v in over.items():
    c[k] = type(c[k])(float(v)) if isinstance(c[k], (int, float)) else v
corpus, tok = corpus_and_tokenizer(cfg)
torch.manual_seed(cfg["seed"])
m = new_model(c, tok, name)
dev = torch.device("cpu")
s = train(m, corpus.stream(c["mix"], name), tok, c, dev, True, "eager", name)
h = corpus.heldout
res = {"over": over, "train_s": round(s, 1),
       "add": exact_match(m, tok, h["add"], dev, 400, 5),
       "copy": exact_match(m, tok, h["copy"], dev, 400, 12),
       "count": exact_match(m, tok, h["count"], dev, 400, 40),
       "eos": eos_stop_share(m, tok, h, dev, 400)}
# recall: argmax over choices by loglikelihood of answer
with torch.no_grad():
    hits = 0
    for it in h["recall"]:
        scores = []
        for ch in it.choices:
            ids = tok(it.prompt + ch, return_tensors="pt").input_ids
            p = len(tok(it.prompt).input_ids)
            lp = torch.log_softmax(m(ids).logits[0, :-1].float(), -1)
            scores.append(sum(lp[i - 1, ids[0, i]].item() for i in range(p, ids.shape[1])))
        hits += it.choices[scores.index(max(scores))] == it.answer
    res["recall"] = hits / len(h["recall"])
print(json.dumps(res), flush=True)

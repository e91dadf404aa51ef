"""Quick experiment: sentence-embedding distillation objectives for MiniLM -> [0,3,5]."""
import sys, time, json, math
import numpy as np, torch, torch.nn.functional as F
from transformers import AutoModel
from distilkit.data import TokenDataset
from distilkit.modeling import load_tokenizer, packaged_minilm_path
from distilkit.tasks import read_task
from distilkit.zeroshot import embed
from distilkit.metrics import compute_metrics

name, steps, lr, w_mat, w_tok, spans, prec = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]), sys.argv[6], sys.argv[7]
torch.set_num_threads(2); torch.manual_seed(0)
T = str(packaged_minilm_path()); S = sys.argv[8]
tok = load_tokenizer(T)
teacher = AutoModel.from_pretrained(T).eval().requires_grad_(False)
student = AutoModel.from_pretrained(S).train()
ds = TokenDataset(sys.argv[9], "train")
ex = read_task("stsb", "dev", "/work/shared/data/glue")
def sts(m):
    a = embed(m, tok, [e.text_a for e in ex]); b = embed(m, tok, [e.text_b for e in ex])
    m.train(); return compute_metrics("stsb", F.cosine_similarity(a, b).numpy(), np.array([e.label for e in ex]))["spearman"]
END = {1012, 999, 1029}
def sentences(seq):
    body = seq[1:-1]; out, cur = [], []
    for t in body:
        cur.append(int(t))
        if int(t) in END and len(cur) >= 4:
            out.append(cur); cur = []
    if len(cur) >= 4: out.append(cur)
    return out
def make_batch(idx, rng):
    items = []
    for i in idx:
        seq = ds[i]
        if spans == "seq": items.append(list(seq[1:-1]))
        else:
            sents = sentences(seq)
            if spans == "sent": items += sents
            else:  # mix: runs of 1-3 sentences
                k = 0
                while k < len(sents):
                    n = int(rng.integers(1, 4)); items.append(sum(sents[k:k+n], [])); k += n
    L = max(len(x) for x in items) + 2
    ids = torch.zeros(len(items), L, dtype=torch.long); att = torch.zeros_like(ids)
    for r, x in enumerate(items):
        x = [101] + x[:126] + [102]; ids[r, :len(x)] = torch.tensor(x); att[r, :len(x)] = 1
    return ids[:, :min(L,128)], att[:, :min(L,128)]
def pooled(h, att):
    m = att.unsqueeze(-1).float(); return F.normalize((h.float()*m).sum(1)/m.sum(1), dim=-1)
opt = torch.optim.AdamW(student.parameters(), lr=lr, betas=(0.9, 0.98), eps=1e-6)
sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s+1)/(0.05*steps), max(0.0, (steps-s)/(steps*0.95))))
rng = np.random.default_rng(0); B = int(__import__("os").environ.get("B", 32))
log = {"name": name, "args": sys.argv[1:], "sts": {0: sts(student)}, "loss": []}
print(name, "step 0 sts", log["sts"][0], flush=True)
t0 = time.time(); ntok = 0
for step in range(1, steps+1):
    idx = rng.choice(len(ds), B, replace=False)
    ids, att = make_batch(idx, rng); ntok += int(att.sum())
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=prec == "bf16"):
        with torch.no_grad(): th = teacher(input_ids=ids, attention_mask=att).last_hidden_state
        sh = student(input_ids=ids, attention_mask=att).last_hidden_state
    te, se = pooled(th, att), pooled(sh, att)
    loss = (1 - (te*se).sum(-1)).mean()
    parts = [float(loss.detach())]
    if w_mat:
        lm = F.mse_loss(se @ se.T, te @ te.T); loss = loss + w_mat*lm; parts.append(float(lm))
    if w_tok:
        m = att.bool(); lt = (1 - F.cosine_similarity(sh.float()[m], th.float()[m], dim=-1)).mean(); loss = loss + w_tok*lt; parts.append(float(lt))
    opt.zero_grad(); loss.backward(); torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0); opt.step(); sched.step()
    if step % 20 == 0:
        log["loss"].append([step] + parts); print(step, [round(p, 5) for p in parts], f"{ntok/(time.time()-t0):.0f} tok/s", flush=True)
    if step % (steps//2) == 0:
        log["sts"][step] = sts(student); print(name, "step", step, "sts", log["sts"][step], flush=True)
log["seconds"] = time.time()-t0; log["tokens"] = ntok
json.dump(log, open(f"{name}.json", "w"), indent=1)

"""Which teacher layers should a layer-drop student keep? Compares selections before any training.

    python bench/layer_selection.py TEACHER_HF_FOLDER CHATDATA_FOLDER [--keep 24] [--ask] [--out docs/layer-selection.json]

TEACHER_HF_FOLDER: the converted teacher (for the default recipe: $EDGEKIT_HOME/teachers/gguf-*, the Q4_1 GGUF
dequantized to fp32); CHATDATA_FOLDER: a chat-data cache ($EDGEKIT_HOME/chatdata/<key>, answers.jsonl and
heldout.jsonl). Selections: block influence (1 - cosine of a layer's input and output hidden states) on 8
TinyStories windows (what the build does) and on 8 chat training examples, and a greedy search that drops,
one at a time, the layer whose removal raises the teacher-vs-student KL on 12 chat training examples least.
Each untrained student is scored on the held-out chat answers (perplexity ratio to the teacher, top-1
agreement) and, with --ask, answers six simple questions greedily. Prints and writes JSON.

--quiz-scan N: instead, every set of (teacher layers - keep) layers among the N least influential on TinyStories, each
student scored (untrained) by its perplexity on the teacher's answers to the *training* quiz questions
(rows with source "fact": no held-out prompt is looked at), first 48 answer tokens; then the best set is
scored like the selections above. --scan-source fact,classify scores the answers of each source (ranked
by the first; classify: one-word judgements, recipe classify_prompts).
"""
import itertools
import argparse
import json
import sys
import time
from pathlib import Path
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from edgekit.workshop import student as S

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("teacher", type=Path)
ap.add_argument("chatdata", type=Path)
ap.add_argument("--keep", type=int, default=28, help="layers the student keeps [28: the default recipe]")
ap.add_argument("--ask", action="store_true")
ap.add_argument("--quiz-scan", type=int, default=0, metavar="N", help="scan drop sets among the N least influential layers")
ap.add_argument("--scan-source", default="fact",
                help="--quiz-scan scores the training answers of these sources (comma-separated; the set is ranked "
                     "by the first), e.g. fact,classify (classify: one-word judgements, recipe classify_prompts)")
ap.add_argument("--out", type=Path, default=Path("bench/results/layer-selection.json"))
ap.add_argument("--text", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/tinystories/tinystories_v1_validation_head.txt")
args = ap.parse_args()
if args.quiz_scan < 0:
    ap.error("--quiz-scan N needs N > 0")
torch.set_num_threads(2)
T, C = args.teacher, args.chatdata
tok = AutoTokenizer.from_pretrained(T)
teacher = AutoModelForCausalLM.from_pretrained(T, dtype=torch.float32).eval()
eot = tok.convert_tokens_to_ids("<|im_end|>")

def ex_ids(p, a):
    head = tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
    h = tok(head, add_special_tokens=False)["input_ids"]
    t = tok(a, add_special_tokens=False)["input_ids"] + [eot]
    return torch.tensor([h + t]), len(h)

rows = [json.loads(l) for l in (C / "answers.jsonl").open()]
train = [r for r in rows if r.get("split") == "train" and r.get("answer")]
held = [json.loads(l) for l in (C / "heldout.jsonl").open()]
held_ids = [ex_ids(r["prompt"], r["answer"]) for r in held]
cal_chat = [ex_ids(r["prompt"], r["answer"])[0] for r in train[:8]]
text = args.text.read_text()[:200000]
tids = tok(text)["input_ids"]
cal_text = [torch.tensor([tids[i * 128:(i + 1) * 128]]) for i in range(8)]

@torch.no_grad()
def chat_eval(model, examples=None):
    nll, n, agree = 0.0, 0, 0
    for ids, start in held_ids if examples is None else examples:
        lg = model(input_ids=ids).logits[0, start - 1:-1]
        tgt = ids[0, start:]
        nll += torch.nn.functional.cross_entropy(lg, tgt, reduction="sum").item()
        agree += (lg.argmax(-1) == tgt).sum().item(); n += len(tgt)
    return nll / n, agree / n

QS = ["What is the capital of France?", "How many days are in a week?", "What is the boiling point of water in Celsius?",
      "What is the opposite of hot?", "What is 2 plus 2?", "What language is spoken in Spain?"]
@torch.no_grad()
def ask(model):
    out = []
    for q in QS:
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt")
        ids = ids if torch.is_tensor(ids) else ids["input_ids"]
        g = model.generate(ids, max_new_tokens=30, do_sample=False)
        out.append(tok.decode(g[0, ids.shape[1]:], skip_special_tokens=True))
    return out

t_nll, t_agree = chat_eval(teacher)
print(f"teacher chat nll {t_nll:.3f} agree {t_agree:.3f}", flush=True)
res = {"teacher": {"nll": t_nll, "agree": t_agree}}

def score(name, keep):
    st = S.make_student(teacher, keep, 1.0, cal_text[:4])
    nll, ag = chat_eval(st)
    r = {"keep": keep, "chat_ppl_ratio": float(torch.exp(torch.tensor(nll - t_nll))), "agree": ag}
    if args.ask: r["answers"] = ask(st)
    res[name] = r
    print(name, json.dumps(r), flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True); args.out.write_text(json.dumps(res, indent=1))

if args.quiz_scan:
    sources = [s for s in args.scan_source.split(",") if s]
    quiz = {s: [] for s in sources}
    for r in train:
        if r.get("source") in quiz:
            ids, start = ex_ids(r["prompt"], r["answer"])
            quiz[r["source"]].append((ids[:, :start + 48], start))
    def quiz_nll(model):  # per-token NLL of each source's answers, the held-out scorer's loop
        return {s: chat_eval(model, q)[0] for s, q in quiz.items()}
    if not sources or not all(quiz.values()):
        sys.exit(f"{C}: no training answers of source(s) {[s for s in sources if not quiz[s]] or sources}: nothing to scan on")
    if S.num_layers(teacher) - args.keep > args.quiz_scan:
        sys.exit(f"--quiz-scan {args.quiz_scan}: fewer candidates than the {S.num_layers(teacher) - args.keep} layers to drop")
    t_quiz = quiz_nll(teacher)
    infl = S.layer_influence(teacher, cal_text)
    order = sorted(range(1, S.num_layers(teacher) - 1), key=lambda i: infl[i])[:args.quiz_scan]
    scan = []
    for drop in itertools.combinations(order, S.num_layers(teacher) - args.keep):
        k = [i for i in range(S.num_layers(teacher)) if i not in drop]
        v = quiz_nll(S.make_student(teacher, k, 1.0, cal_text[:4]))
        ratios = {s: float(torch.exp(torch.tensor(v[s] - t_quiz[s]))) for s in sources}
        scan.append({"drop": sorted(drop), "quiz_ppl_ratio": ratios[sources[0]],
                     **({f"{s}_ppl_ratio": r for s, r in ratios.items()} if len(sources) > 1 else {})})
        print(json.dumps(scan[-1]), flush=True)
    scan.sort(key=lambda r: r["quiz_ppl_ratio"])
    res["quiz_scan"] = {"candidates": order, "sources": sources,
                         "teacher_quiz_nll": t_quiz[sources[0]] if len(sources) == 1 else t_quiz,
                         "quiz_examples": len(quiz[sources[0]]) if len(sources) == 1 else {s: len(q) for s, q in quiz.items()},
                         "ranked": scan}
    score("quiz_scan_best", [i for i in range(S.num_layers(teacher)) if i not in scan[0]["drop"]])
    sys.exit(0)

score("influence_text", S.select_layers_by_influence(teacher, cal_text, args.keep))
score("influence_chat", S.select_layers_by_influence(teacher, cal_chat, args.keep))

# greedy: repeatedly drop the layer whose removal hurts the calibration chat KL least (measured, not a proxy)
cal_ex = [ex_ids(r["prompt"], r["answer"]) for r in train[8:20]]
with torch.no_grad():
    t_lp = [torch.log_softmax(teacher(input_ids=i).logits[0, s - 1:-1], -1) for i, s in cal_ex]
def cal_kl(model):
    kl = 0.0
    with torch.no_grad():
        for (i, s), tl in zip(cal_ex, t_lp):
            sl = torch.log_softmax(model(input_ids=i).logits[0, s - 1:-1], -1)
            kl += (tl.exp() * (tl - sl)).sum(-1).mean().item()
    return kl / len(cal_ex)
keep = list(range(S.num_layers(teacher))); t0 = time.time()
while len(keep) > args.keep:
    best = None
    for L in keep[1:-1]:
        k = [x for x in keep if x != L]
        m = S.make_student(teacher, k, 1.0, cal_text[:4]); v = cal_kl(m)
        if best is None or v < best[0]: best = (v, L)
    keep.remove(best[1]); print(f"drop {best[1]} -> kl {best[0]:.3f} ({time.time()-t0:.0f}s)", flush=True)
score("greedy_kl_chat", keep)

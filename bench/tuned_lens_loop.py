"""Time tuned-lens 0.2.0's own training loop on lensmap's reference budget.

The inner loop of `tuned_lens/scripts/train_loop.py` (`Train.execute`), written
out literally against the library's objects, because that module imports
torchdata's DataLoader2, which torch >= 2.4 no longer has:
`TunedLens.from_model`, the frozen model in float32 under `no_grad`, then for
every translator i on `hidden_states[i]`: the lens forward under
`torch.autocast(bfloat16)`, KL(final || lens_i) averaged over tokens (label
shift 0), and `backward()` layer by layer; then `clip_grad_norm_(1.0)`, SGD
(Nesterov momentum 0.9, lr 0.1, weight decay 1e-3) and a linear schedule to 0
(`get_linear_schedule_with_warmup`, no warm-up), one 512-token sequence a step.
One deviation from the literal code: the lens logits are cast to float32
before `log_softmax`, which is what autocast does on CUDA (the library's
target); CPU autocast would leave the log-softmax in bf16. That is also what
the reference lens A was trained with (shared/reference/tuned/README.md).

The chunks are lensmap's (`src/train.rs`: `chunks`): documents split on
"\\n\\f\\n", each encoded alone without special tokens, joined as EOS, doc 0,
EOS, doc 1, ..., cut into 512-token chunks, ragged tail dropped; they are
taken in the order of data/torch_randperm_2916_seed1.txt. The tokenizer is
the `tokenizer.json` that `lensmap convert` writes next to the model.
Checked once (SmolLM2, corpus/train.txt): all 2,916 chunks equal those of
`tuned_lens.data.chunk_and_tokenize(max_length=512)` with `AutoTokenizer` on
that directory; step 1 (chunk 1165) gives the reference lens A's loss (517.34
vs 517.37) and grad norm (316.92), and lensmap's own f32 step 1 on its chunk
1165 gives the same per-layer losses to 4e-4 relative.

    lensmap convert --model models/SmolLM2-135M-Instruct.Q4_1.gguf --out target/smollm2-hf
    python bench/tuned_lens_loop.py --model target/smollm2-hf --steps 24 --out runs/tuned-lens-loop
"""
import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import AutoModelForCausalLM, get_linear_schedule_with_warmup
from tuned_lens import TunedLens


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def lensmap_chunks(tokenizer_json, text, seq_len, eos_id):
    tok = Tokenizer.from_file(str(tokenizer_json))
    docs = text.split("\n\f\n")
    stream = []
    for enc in tok.encode_batch(docs, add_special_tokens=False):
        stream.append(eos_id)
        stream.extend(enc.ids)
    n = len(stream) // seq_len
    return [stream[i * seq_len : (i + 1) * seq_len] for i in range(n)]


def main():
    root = Path(__file__).resolve().parent.parent
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True, help="HF directory from `lensmap convert`")
    ap.add_argument("--corpus", default=root / "corpus/train.txt", type=Path)
    ap.add_argument("--order", default=root / "data/torch_randperm_2916_seed1.txt", type=Path)
    ap.add_argument("--steps", type=int, default=24, help="sequences = optimiser steps")
    ap.add_argument("--total-steps", type=int, default=None,
                    help="length of the lr schedule (default: --steps; 24 = the full budget)")
    ap.add_argument("--seq-len", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None, help="write the lens here (lens.save)")
    ap.add_argument("--report", type=Path, default=None, help="write timings and losses (JSON)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    t0 = time.perf_counter()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    model.eval().requires_grad_(False)
    eos = model.config.eos_token_id
    chunks = lensmap_chunks(Path(args.model) / "tokenizer.json", args.corpus.read_text(),
                            args.seq_len, eos)
    order = [int(x) for x in args.order.read_text().split()][: args.steps]
    lens = TunedLens.from_model(model)
    opt = torch.optim.SGD(lens.parameters(), lr=1.0 * (1 - 0.9), momentum=0.9,
                          nesterov=True, weight_decay=1e-3)
    sched = get_linear_schedule_with_warmup(opt, 0, args.total_steps or args.steps)
    setup_s = time.perf_counter() - t0
    print(f"CPU: {cpu_model()}; torch {torch.__version__}, {torch.get_num_threads()} threads; "
          f"load {os.getloadavg()[0]:.2f}")
    print(f"setup {setup_s:.1f} s; {len(chunks)} chunks of {args.seq_len}; "
          f"chunk {order[0]} starts {chunks[order[0]][:6]}")

    log = []
    t_train = time.perf_counter()
    for step, c in enumerate(order, 1):
        t_step = time.perf_counter()
        ids = torch.tensor([chunks[c]])
        with torch.no_grad():
            output = model(input_ids=ids, output_hidden_states=True)
        labels = output.logits.float().log_softmax(dim=-1)
        losses = []
        for i, h in enumerate(output.hidden_states[:-1]):
            with torch.autocast("cpu", dtype=torch.bfloat16):
                logits = lens(h, idx=i).float()  # CUDA autocast's f32 log_softmax
                loss = torch.sum(labels.exp() * (labels - logits.log_softmax(-1)), dim=-1).mean()
                losses.append(loss.item())
            loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(lens.parameters(), 1.0).item()
        opt.step()
        opt.zero_grad(set_to_none=False)
        sched.step()
        dt = time.perf_counter() - t_step
        log.append({"step": step, "chunk": c, "s": dt, "loss_sum": sum(losses),
                    "loss_per_layer": losses, "grad_norm": grad_norm})
        print(f"step {step}/{len(order)} chunk {c}: {dt:.2f} s, loss_sum {sum(losses):.3f}, "
              f"grad_norm {grad_norm:.2f}, load {os.getloadavg()[0]:.2f}", flush=True)
    train_s = time.perf_counter() - t_train
    tokens = len(order) * args.seq_len
    print(f"trained {tokens} tokens in {train_s:.1f} s ({tokens / train_s:.1f} tokens/s, "
          f"{train_s / len(order):.2f} s/step)")
    if args.out:
        lens.save(args.out)
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps({
            "cpu": cpu_model(), "threads": args.threads, "torch": torch.__version__,
            "setup_s": setup_s, "train_time_s": train_s, "tokens": tokens,
            "tokens_per_s": tokens / train_s, "steps": log}, indent=1))


if __name__ == "__main__":
    main()

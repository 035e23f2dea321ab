"""Per-rank masking under torch.distributed: each rank masks its own shard inside the step.

The collator only pads (`mask_on="step"`); `gpumask.attach` makes the model compute its
labels on its own device in every forward call, so each DDP rank masks exactly the rows it
trains on. The script trains a tiny randomly initialised Llama for one pass and writes the
labels each rank made (gathered on rank 0), to compare with `dataset_map.py`.

    torchrun --standalone --nproc_per_node=2 examples/ddp_masking.py --rows 64 --out ddp.json

The gloo backend runs on CPU; on GPUs the same script uses NCCL and masks on each GPU.
"""

from __future__ import annotations

import argparse
import gc
import json

import torch
import torch.distributed as dist
from conversations import DEFAULT_TOKENIZER, chatml_spec, make_rows
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, DistributedSampler
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

import gpumask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", default=DEFAULT_TOKENIZER)
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--out", default="labels_ddp.json")
    args = parser.parse_args()

    cuda = torch.cuda.is_available()
    dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank()
    device = torch.device("cuda", rank % torch.cuda.device_count()) if cuda else torch.device("cpu")
    torch.manual_seed(0)

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    spec = chatml_spec(tokenizer)
    rows = make_rows(tokenizer, args.rows)
    sampler = DistributedSampler(rows, shuffle=False)
    collate = gpumask.CompletionCollator(tokenizer, spec, mask_on="step")
    loader = DataLoader(rows, batch_size=args.batch_size, sampler=sampler, collate_fn=collate)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(config).to(device)
    gpumask.attach(model, spec)  # before wrapping: the hook runs inside DDP's forward
    made = []  # the labels the hook made, seen by a hook registered after it
    model.register_forward_pre_hook(
        lambda m, a, kw: made.append(kw["labels"].cpu()), with_kwargs=True
    )
    ddp = DistributedDataParallel(model)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=1e-3)

    mine = {}
    indices = list(sampler)
    for step, batch in enumerate(loader):
        batch = {k: v.to(device) for k, v in batch.items()}
        loss = ddp(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        real = batch["attention_mask"].bool().cpu()
        start = step * args.batch_size
        for j, (labels, mask) in enumerate(zip(made[-1], real, strict=True)):
            mine[indices[start + j]] = labels[mask].tolist()

    # Free DDP's reducer now: were it the last holder of the process group at exit, it would
    # tear the group down holding the GIL, which deadlocks with gloo's worker thread when that
    # thread still has Python objects to release. destroy_process_group() releases the GIL.
    del ddp, optimizer
    gc.collect()
    gathered = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, mine)
    if rank == 0:
        merged = {i: row for part in gathered for i, row in part.items()}
        labels = {str(i): merged[i] for i in sorted(merged)}
        with open(args.out, "w") as f:
            json.dump({"labels": labels}, f)
        print(f"{len(labels)} rows from {dist.get_world_size()} ranks -> {args.out}")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()

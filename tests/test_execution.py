"""How mask_labels runs: under torch.compile, on long rows, without host synchronisation."""

import pytest
import torch
from chatml import CALL, parse, spec

from gpumask import mask_labels


def test_traces_under_torch_compile_fullgraph_with_no_graph_break():
    chat = spec(masked_spans=[([8], [9])], last_turn_only=True)
    ids, expected = parse("@user q E nl @assistant a E nl @assistant *b <tr> x </tr> *c *E nl")
    position_ids = torch.arange(ids.shape[1])[None]

    def step(input_ids, position_ids):
        return mask_labels(input_ids, chat, position_ids=position_ids, return_stats=True)

    compiled = torch.compile(step, fullgraph=True, backend="eager", dynamic=False)
    labels, stats = compiled(ids, position_ids)
    assert labels[0].tolist() == expected
    assert stats["trained"].tolist() == [3]


def test_tool_call_turns_trace_under_torch_compile_fullgraph():
    chat = spec(tool_call=[CALL], tool_call_turns="only", last_turn_only=True)
    ids, expected = parse("@user q E nl @assistant *a *<call> *E nl @tool t E nl @assistant b E")
    compiled = torch.compile(
        lambda x: mask_labels(x, chat, return_stats=True), fullgraph=True, backend="eager"
    )
    labels, stats = compiled(ids)
    assert labels[0].tolist() == expected
    assert stats["dropped_turns"].tolist() == [1]


def test_compiled_with_inductor_gives_the_same_labels():
    chat = spec(masked_spans=[([8], [9])])
    ids, expected = parse("@user q E nl @assistant *a <tr> x </tr> *c *E nl @tool t E")
    compiled = torch.compile(lambda x: mask_labels(x, chat), fullgraph=True)
    assert compiled(ids)[0].tolist() == expected


def test_several_span_kinds_trace_under_torch_compile():
    chat = spec(masked_spans=[([8], [9]), ([10], [11])])
    ids, expected = parse("@assistant *a <tr> x </tc> </tr> *b <tc> y </tc> *E")
    compiled = torch.compile(lambda x: mask_labels(x, chat), fullgraph=True, backend="eager")
    assert compiled(ids)[0].tolist() == expected


def test_one_row_of_131072_tokens_is_masked_like_its_pieces():
    row, expected = parse("@user q r E nl @assistant *a *b <tr> x </tr> *E nl")
    repeats = 131072 // row.shape[1] + 1
    ids = row.repeat(1, repeats)[:, :131072]
    chat = spec(masked_spans=[([8], [9])])
    labels = mask_labels(ids, chat)
    assert labels.shape == (1, 131072)
    assert labels[0].tolist() == (expected * repeats)[:131072]


def test_batch_of_64_by_8192():
    row, expected = parse("@system s E nl @user q E nl @assistant *a *E nl @tool t E nl")
    repeats = 8192 // row.shape[1] + 1
    ids = row.repeat(64, repeats)[:, :8192]
    labels = mask_labels(ids, spec())
    assert torch.equal(labels, torch.tensor([(expected * repeats)[:8192]] * 64))


def test_cpu_row_blocks_give_the_same_labels_and_stats(monkeypatch):
    chat = spec(
        masked_spans=[([8], [9])],
        last_turn_only=True,
        ignore_token_ids=[100 + ord("a")],
        ignore_token_prob=0.5,
    )
    row, _ = parse("@user q E nl @assistant a b E nl @assistant a <tr> x </tr> c E")
    ids = row.repeat(7, 1)
    ids[3, 4] = 6  # rows differ
    mask = torch.ones_like(ids)
    mask[5, :3] = 0
    position_ids = torch.arange(ids.shape[1]).repeat(7, 1)
    position_ids[:, 10:] -= 10
    kwargs = dict(attention_mask=mask, position_ids=position_ids, return_stats=True)
    whole, whole_stats = mask_labels(
        ids, chat, generator=torch.Generator().manual_seed(3), **kwargs
    )
    monkeypatch.setattr(
        "gpumask.torch_backend.CPU_BLOCK_TOKENS", 2 * ids.shape[1]
    )  # blocks of 2 rows
    blocked, stats = mask_labels(ids, chat, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(blocked, whole)
    assert torch.equal(stats["trained"], whole_stats["trained"])
    assert torch.equal(stats["role_tokens"], whole_stats["role_tokens"])
    assert (whole != -100).any()


def test_eager_cpu_calls_skip_plain_runs_and_compiled_calls_do_not():
    from unittest import mock

    from gpumask import torch_backend

    chat = spec(masked_spans=[([8], [9])])
    first, expected_first = parse("@user q r s E nl @assistant *a *b <tr> x y </tr> *c *E nl")
    second, expected_second = parse("@user q E nl @assistant *a *E")
    width = first.shape[1]
    ids = torch.zeros(2, width, dtype=torch.int64)
    ids[0], ids[1, : second.shape[1]] = first[0], second[0]
    mask = (torch.arange(width) < torch.tensor([[width], [second.shape[1]]])).long()
    expected = [expected_first, expected_second + [-100] * (width - second.shape[1])]

    with mock.patch.object(
        torch_backend, "_on_marker_runs", wraps=torch_backend._on_marker_runs
    ) as skipping:
        assert mask_labels(ids, chat, attention_mask=mask).tolist() == expected
        assert skipping.call_count == 1
        compiled = torch.compile(
            lambda x, m: mask_labels(x, chat, attention_mask=m), fullgraph=True, backend="eager"
        )
        assert compiled(ids, mask).tolist() == expected
        assert skipping.call_count == 1


def _compile_ten_shapes(chat, step) -> tuple[int, list]:
    """(graphs, graph breaks) of `step` compiled with dynamic=True over 10 batch shapes."""
    from torch._dynamo.testing import CompileCounter
    from torch._dynamo.utils import counters

    row, expected = parse("@user q E nl @assistant *a <tr> x </tr> *c *E nl @tool t E")
    torch._dynamo.reset()
    counters.clear()
    graphs = CompileCounter()
    compiled = torch.compile(step, backend=graphs, dynamic=True)
    for i in range(10):
        size, length = 1 + i % 4, 20 + 7 * i
        ids = row.repeat(size, 3)[:, :length].contiguous()
        labels = compiled(ids, torch.ones_like(ids))
        assert labels[0].tolist() == (expected * 3)[:length]
    return graphs.frame_count, list(counters["graph_break"])


@pytest.mark.parametrize("spans", [[([8], [9])], [([8], [9]), ([10], [11])]])
def test_dynamic_compile_over_ten_shapes_after_prepare_makes_at_most_two_graphs(spans):
    import gpumask

    chat = spec(masked_spans=spans)
    gpumask.prepare(chat, "cpu")
    frames, breaks = _compile_ten_shapes(chat, lambda x, m: mask_labels(x, chat, attention_mask=m))
    assert breaks == [] and frames <= 2  # a batch of 1 is a shape of its own to dynamo


def test_attached_model_compiles_over_ten_shapes_in_at_most_two_graphs():
    import gpumask

    class Echo(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = torch.nn.Parameter(torch.zeros(1))

        def forward(self, input_ids, attention_mask=None, labels=None):
            return labels

    chat = spec(masked_spans=[([8], [9])])
    model = Echo()
    gpumask.attach(model, chat)
    frames, breaks = _compile_ten_shapes(chat, lambda x, m: model(input_ids=x, attention_mask=m))
    assert breaks == [] and frames <= 2


def _peak_bytes(prof) -> int:
    """The most memory live at once among the allocations `prof` recorded."""
    events = [e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"]
    live = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        live += event.nbytes()
        peak = max(peak, live)
    return peak


def test_span_automaton_at_its_compiled_step_count_allocates_only_the_batch():
    """Under torch.compile the automaton of several span kinds runs 31 steps whatever the
    length (so that the step count is no guard on a dynamic T); run unfused (a backend
    without Inductor), its shifts by 2**i must not allocate past the batch, as padding did
    (12.4 GiB for one call at 4 x 28)."""
    from unittest import mock

    from torch.profiler import ProfilerActivity, profile

    from gpumask.padding import Batch
    from gpumask.torch_backend import mask_every_token

    chat = spec(masked_spans=[([8], [9]), ([10], [11])])
    ids, expected = parse("@assistant *a <tr> x </tc> </tr> *b <tc> y </tc> *E")
    batch = Batch(ids)
    mask_every_token(batch, chat, -100, False)  # tables built before measuring
    with mock.patch.object(torch.compiler, "is_compiling", return_value=True):
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
            labels, _ = mask_every_token(batch, chat, -100, False)
    assert labels[0].tolist() == expected
    assert _peak_bytes(prof) < 1 << 20  # (a few KiB for 13 tokens)


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
@pytest.mark.parametrize("shape", [(1, 2**16), (4, 2**14)])
def test_every_token_path_allocates_at_most_8x_the_ids(shape, dtype):
    from torch.profiler import ProfilerActivity, profile

    from gpumask.padding import Batch
    from gpumask.torch_backend import mask_every_token

    chat = spec(masked_spans=[([8], [9])])
    row, expected = parse("@user q E nl @assistant *a <tr> x </tr> *c *E nl @tool t E")
    ids = row.repeat(shape[0], shape[1] // row.shape[1] + 1)[:, : shape[1]].to(dtype)
    batch = Batch.of(ids.contiguous(), torch.ones_like(ids, dtype=torch.bool))
    mask_every_token(batch, chat, -100, False)  # tables built before measuring
    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        labels, _ = mask_every_token(batch, chat, -100, False)
    assert labels[0, : len(expected)].tolist() == expected
    assert _peak_bytes(prof) <= 8 * ids.numel() * ids.element_size()

import torch

from ttt_core.plugins import create_host


def test_registered_through_entry_point():
    host = create_host()
    component = host.registry["memory_writer"].get("context_mean")
    assert component.provider.distribution == "ttt-example-writer"


def test_writer_starts_as_identity_and_reads_context():
    host = create_host()
    component = host.registry["memory_writer"].get("context_mean")
    writer = component.build(component.config(scale=2.0), dim=8)
    memory, context = torch.randn(2, 3, 8), torch.randn(2, 5, 8)
    assert torch.equal(writer({}, memory, context, None), memory)
    torch.nn.init.normal_(writer.proj.weight)
    mask = torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = writer({}, memory, context, mask)
    expected = memory[0] + 2.0 * writer.proj(context[0, :2].mean(0))
    torch.testing.assert_close(out[0], expected)

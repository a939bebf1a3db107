"""
CUDA graphs of the fast paths: capture on the policy's device, checked, eager on any failure.

``GraphCapture(device)`` captures functions of static tensors into graphs that share one memory
pool. Each capture is checked against an eager run of the same function, and a graph that fails
to capture or disagrees is dropped with a warning (that piece runs eagerly); ``captured`` and
``failed`` record which, and ``capture_report`` gives them to the benchmark. The bookkeeping a
first GPU run would trip over is here, once:

* everything runs on the policy's own device (``cuda:1`` captures on a stream of ``cuda:1``);
* every warmup and capture runs on one side stream, created once: the caching allocator reuses
  a pool's freed blocks only for allocations on the stream that freed them, so graphs captured
  on different streams would share the pool in name only (torch's ``graph`` docs: captures
  sharing a pool should pass the same ``stream``);
* a graph's static outputs are zeroed before the check replay, so an empty graph (captured on
  the wrong device, say) cannot pass by replaying the eager values still in its buffers;
* a capture that raises leaves the thread on its capture stream and the pool mid-recording:
  the stream is restored in ``finally`` and later captures get a fresh pool and side stream,
  so one failure does not make every later capture fail.

On the CPU there is nothing to capture; tests replace ``_Graph`` to check this bookkeeping.
"""

import contextlib
import math
import warnings

import torch


class _Graph:
    """One CUDA graph of ``fn()`` over static tensors; ``replay`` returns its output."""

    def __init__(self, fn, pool, stream, warmup=2):
        current = torch.cuda.current_stream(stream.device)
        stream.wait_stream(current)
        with torch.cuda.stream(stream):
            for _ in range(warmup):  # cuBLAS handles, workspaces, autotuning: before capture
                fn()
        current.wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph, pool=pool, stream=stream):
            self.output = fn()

    def replay(self):
        self.graph.replay()
        return self.output


def _tensors(out):
    return list(out) if isinstance(out, tuple) else [out]


class GraphCapture:
    """Capture checked CUDA graphs on ``device`` with one memory pool (see the module doc)."""

    def __init__(self, device):
        self.device = torch.device(device)
        self.cuda = self.device.type == 'cuda'
        self.captured = []  # names of the graphs captured and checked
        self.failed = []  # (name, 'ErrorType: message' or 'differs: max |diff| x')
        self._renew()

    def _renew(self):
        """Start a new memory pool on a new side stream (at start, and after a failure)."""
        with self.on_device():
            self.pool = torch.cuda.graph_pool_handle() if self.cuda else None
            self.stream = torch.cuda.Stream(self.device) if self.cuda else None

    @property
    def failures(self):
        """Return the number of graphs dropped (failed to capture, or differed)."""
        return len(self.failed)

    def on_device(self):
        """Return a context that makes the policy's device the current CUDA device."""
        return torch.cuda.device(self.device) if self.cuda else contextlib.nullcontext()

    def capture(self, name, fn):
        """
        Capture ``fn``; return the graph, or None (with a warning) if it fails or disagrees.

        ``fn`` returns a tensor, or a tuple whose first tensor is compared with an eager run.
        """
        with self.on_device():
            current = torch.cuda.current_stream(self.device) if self.cuda else None
            try:
                expected = _tensors(fn())[0].float().clone()
                graph = _Graph(fn, self.pool, self.stream)
                for tensor in _tensors(graph.output):
                    tensor.zero_()  # the check replay must write them, or the graph is empty
                got = _tensors(graph.replay())[0].float()
            except Exception as err:  # noqa: B902 - any failure in capture means: run eagerly
                self.failed.append((name, f'{type(err).__name__}: {err}'))
                self._renew()  # the old pool may be left mid-recording
                warnings.warn(f'fast path: CUDA graph capture of the {name} failed '
                              f'({type(err).__name__}: {err}); running it eagerly.',
                              RuntimeWarning)
                return None
            finally:
                if current is not None:
                    torch.cuda.set_stream(current)
        scale = max(expected.abs().max().item(), 1.0)
        error = (got - expected).abs().max().item()
        if not math.isfinite(error) or error > 1e-2 * scale:
            self.failed.append((name, f'differs: max |diff| {error:.3g}'))
            warnings.warn(f'fast path: the CUDA graph of the {name} differs from the eager run '
                          f'(max |diff| {error:.3g}); running it eagerly.', RuntimeWarning)
            return None
        self.captured.append(name)
        return graph

    def synchronize(self):
        if self.cuda:
            torch.cuda.synchronize(self.device)


def capture_report(capture):
    """
    Return ``{'captured': [names], 'failed': [[name, why]]}`` of a ``GraphCapture``.

    None (no capture was attempted: CPU, or graphs off) gives empty lists. JSON-ready.
    """
    if capture is None:
        return {'captured': [], 'failed': []}
    return {'captured': list(capture.captured), 'failed': [list(f) for f in capture.failed]}

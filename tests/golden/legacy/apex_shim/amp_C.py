# Golden-generation shim for megatron-core 0.6 (apex's CUDA kernels), on CPU.
import torch


def multi_tensor_scale(chunk_size, noop_flag, tensor_lists, scale):
    for src, dst in zip(*tensor_lists):
        dst.copy_(src * scale)


def multi_tensor_l2norm(chunk_size, noop_flag, tensor_lists, per_tensor):
    ts = tensor_lists[0]
    norms = torch.stack([t.float().norm() for t in ts]) if ts else torch.zeros(0)
    return norms.norm().reshape(1), norms

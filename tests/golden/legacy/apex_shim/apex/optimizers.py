# Golden-generation stand-in (make_golden_mc006.py) for apex's fused optimizers, which
# megatron-core 0.6 imports at import time: FusedAdam(adam_w_mode=True, the default) is AdamW;
# like apex's, it counts steps per param group (group['step']), which is where Megatron's
# checkpoints keep the step (torch's AdamW keeps it per parameter, which 0.6's state_dict drops).
import torch


class FusedAdam(torch.optim.AdamW):
    def __init__(self, params, lr=1e-3, bias_correction=True, betas=(0.9, 0.999), eps=1e-8,
                 adam_w_mode=True, weight_decay=0.0, amsgrad=False, **kw):
        assert adam_w_mode and bias_correction
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            group["step"] = group.get("step", 0) + 1
        return super().step(closure)


class FusedSGD(torch.optim.SGD):
    pass

"""The MLflow pyfunc of a DAM-Net model, logged *from code* (nothing pickled).

``mlflow.pyfunc.load_model("models:/damnet-<region>@champion").predict({"pre": a, "post": b})``
with ``a``, ``b`` uint8 arrays (N, 3, H, W), H and W divisible by 32, returns the change
probability (N, H, W) as float32. The weights are the ``model`` artifact, a DAM-Net model
file loaded with ``weights_only=True``.
"""

from __future__ import annotations

import mlflow
import numpy as np
import torch
from mlflow.pyfunc import PythonModel


class ChangeNetModel(PythonModel):
    def load_context(self, context) -> None:
        from damnet.registry import load_model_file

        self.model, self.meta = load_model_file(context.artifacts["model"])

    def predict(self, context, model_input, params=None):
        pre, post = (np.asarray(model_input[k], dtype=np.uint8) for k in ("pre", "post"))
        if pre.ndim == 3:
            pre, post = pre[None], post[None]
        with torch.no_grad():
            logits = self.model(torch.from_numpy(pre), torch.from_numpy(post))
        return logits.float().softmax(1)[:, 1].numpy()


mlflow.models.set_model(ChangeNetModel())

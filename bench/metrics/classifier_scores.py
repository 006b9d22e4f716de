"""Classifier-feature sample-quality scores for generated images: `cfid`, `ckid`, `cis`.

These are NOT the Inception scores of the literature (FID, KID, IS): Inception-v3 weights cannot
be downloaded on the project's machines, so the features come from a classifier the suite trains
itself on the same dataset (`bench.metrics.feature_classifier`). The numbers are comparable only
between runs scored with the same classifier, and with the same numbers of images (FID is biased
upwards at small sample sizes).

- cfid: torchmetrics' `FrechetInceptionDistance(feature=<the classifier>)`: Frechet distance
  between Gaussians fitted to the features of real and generated images (Heusel et al. 2017).
- ckid: torchmetrics' `KernelInceptionDistance(feature=<the classifier>)`: unbiased MMD^2 with
  the cubic polynomial kernel, mean over random subsets (Binkowski et al. 2018).
- cis: exp(E_x[KL(p(y|x) || p(y))]) with p(y|x) the classifier's softmax and p(y) its mean over
  the generated images (Salimans et al. 2016), over all images at once (no 10-way split). 1 when
  every image gets the same prediction; the number of classes at most (confident and uniform
  over the classes).

Features are the input of the classifier's last layer (a Linear or a Conv2d head), flattened.
"""

import warnings

import torch
from torch import nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance


def inception_score(probs: torch.Tensor) -> float:
    """exp(mean KL(p(y|x) || p(y))) of (N, classes) probabilities (rows sum to 1)."""
    p = probs.double()
    marginal = p.mean(0, keepdim=True)
    # xlogy: 0 * log 0 = 0 for classes an image gives no probability.
    kl = (torch.special.xlogy(p, p) - torch.special.xlogy(p, marginal)).sum(1)
    return kl.mean().exp().item()


def _head(classifier: nn.Module) -> nn.Module:
    layers = [m for m in classifier.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if not layers:
        raise ValueError("the classifier has no Linear or Conv2d layer to take features from")
    return layers[-1]


class ClassifierFeatures(nn.Module):
    """A trained classifier as torchmetrics' `feature` module: (N, C, H, W) images in the range
    the classifier was trained on -> (N, num_features) features (the input of its last layer).

    `image_shape` (C, H, W) is what the classifier takes: one dummy forward sets `num_features`,
    which torchmetrics reads instead of probing with Inception's 299 px input. Always in eval
    mode, also when torchmetrics calls `.train()` on its children.
    """

    def __init__(self, classifier: nn.Module, image_shape: tuple[int, int, int]):
        super().__init__()
        self.classifier = classifier.eval().requires_grad_(False)
        self._captured: torch.Tensor | None = None
        _head(classifier).register_forward_pre_hook(self._capture)
        device = next(classifier.parameters()).device
        with torch.no_grad():
            self.num_features = self(torch.zeros(1, *image_shape, device=device)).shape[1]

    def _capture(self, module, inputs) -> None:
        self._captured = inputs[0]

    def train(self, mode: bool = True):
        return super().train(False)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.classifier(x)
        feats, self._captured = self._captured.flatten(1), None
        return feats.float(), logits.float()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features_and_logits(x)[0]


class ClassifierScores:
    """cfid, ckid and cis of generated images against a fixed set of real ones.

    real: (N, C, H, W) images in the classifier's input range; their features are computed once.
    `kid_subset_size` is capped at the numbers of real and generated images; KID draws its
    subsets from torch's global CPU generator, so `scores` forks it and seeds it with `seed`
    (the training's random stream is left as it was).
    """

    def __init__(self, classifier: nn.Module, real: torch.Tensor, *, n_fake: int,
                 kid_subsets: int = 50, kid_subset_size: int = 100, batch_size: int = 250):
        feats = ClassifierFeatures(classifier, tuple(real.shape[1:]))
        self.features, self.batch_size = feats, batch_size
        size = min(kid_subset_size, len(real), n_fake)
        self.fid = FrechetInceptionDistance(feature=feats, reset_real_features=False).to(real.device)
        with warnings.catch_warnings():  # "will save all extracted features": a few hundred here
            warnings.filterwarnings("ignore", message=".*save all extracted features.*")
            self.kid = KernelInceptionDistance(feature=feats, reset_real_features=False,
                                               subsets=kid_subsets, subset_size=size).to(real.device)
        with torch.no_grad():
            probs = []
            for x in real.split(batch_size):
                self.fid.update(x, real=True)
                self.kid.update(x, real=True)
                probs.append(feats.features_and_logits(x)[1].softmax(1))
        self.real_cis = inception_score(torch.cat(probs))  # the data's own score: a ceiling

    @torch.no_grad()
    def scores(self, fake: torch.Tensor, seed: int = 0) -> dict[str, float]:
        """{'cfid', 'ckid', 'cis'} of (M, C, H, W) generated images."""
        self.fid.reset()  # keeps the real features (reset_real_features=False)
        self.kid.reset()
        probs = []
        for x in fake.split(self.batch_size):
            self.fid.update(x, real=False)
            self.kid.update(x, real=False)
            probs.append(self.features.features_and_logits(x)[1].softmax(1))
        with torch.random.fork_rng(devices=[]):  # KID's torch.randperm is on the CPU
            torch.manual_seed(seed)
            kid_mean, _ = self.kid.compute()
        return {"cfid": float(self.fid.compute()), "ckid": float(kid_mean),
                "cis": inception_score(torch.cat(probs))}

"""The conditional VAEs: shapes, loss terms, the beta-TC identity, gradient reversal, the
label-free disentangled encoder, persistence, sampling, and a short seeded training on synthetic
textures (three "modalities" told apart by structure, not colour) whose z_modality must cluster.
Synthetic data only; the real-data experiment is the package's benchmark."""

import json
import math

import pytest
import torch

from mmtok import DamagedFileError, MmtokError, ModalityError
from mmtok_plugin_medimg.model import (ConditionalVAE, DisentangledConditionalVAE, VAEConfig, beta_tc_terms,
                                       gaussian_kl, grad_reverse, load_vae, separation_loss,
                                       supervised_contrastive_loss)
from mmtok_plugin_medimg.train import balanced_batches, train_vae

MODELS = [ConditionalVAE, DisentangledConditionalVAE]
SMALL = dict(image_size=16, channels=3, modalities=["a", "b", "c"], widths=[8, 16])


@pytest.fixture(autouse=True)
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def textures(n_per: int, size: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(3 n_per, 3, size, size) in [0, 1]: horizontal stripes, vertical stripes, a checkerboard;
    random frequency, phase, colour, contrast and noise per image (colour is no cue)."""
    g = torch.Generator().manual_seed(seed)
    r = torch.arange(size).float()
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    images, labels = [], []
    for k in range(3):
        for _ in range(n_per):
            f = 0.5 + 0.6 * torch.rand((), generator=g)
            phase = 2 * math.pi * torch.rand((), generator=g)
            pattern = [torch.sin(f * yy + phase), torch.sin(f * xx + phase),
                       torch.sin(f * xx + phase) * torch.sin(f * yy + phase)][k]
            colour = 0.3 + 0.7 * torch.rand(3, 1, 1, generator=g)
            contrast = 0.2 + 0.25 * torch.rand((), generator=g)
            noise = 0.05 * torch.randn(3, size, size, generator=g)
            images.append((0.5 + contrast * pattern * colour + noise).clamp(0, 1))
            labels.append(k)
    return torch.stack(images), torch.tensor(labels)


# ---------------------------------------------------------------------------- shapes
@pytest.mark.parametrize("size,channels", [(64, 3), (64, 1), (28, 3), (28, 1)])
@pytest.mark.parametrize("cls", MODELS)
def test_shapes(cls, size, channels):
    model = cls(VAEConfig(image_size=size, channels=channels))
    x = torch.rand(2, channels, size, size)
    y = torch.tensor([0, 7])
    out = model(x, y)
    latent = model.latent_size
    assert out.x_hat.shape == x.shape and out.mu.shape == out.logvar.shape == out.z.shape == (2, latent)
    assert 0 <= float(out.x_hat.detach().min()) and float(out.x_hat.detach().max()) <= 1
    assert out.loss.shape == ()
    assert model.decode(out.z, y).shape == x.shape
    parts = model.latent_parts(out.mu)
    assert parts["shared"].shape == (2, 8) and parts["modality"].shape == (2, 8)
    assert model.num_parameters() < 2_000_000


@pytest.mark.parametrize("decoder", ["shared", "heads", "moe"])
def test_decoders_condition_on_the_modality(decoder):
    model = DisentangledConditionalVAE(VAEConfig(**SMALL, decoder=decoder)).eval()
    z = torch.randn(4, 16)
    a = model.decode(z, torch.zeros(4, dtype=torch.long))
    b = model.decode(z, torch.full((4,), 2))
    assert a.shape == (4, 3, 16, 16) and not torch.allclose(a, b)
    gates = model.decoder.gates(z, model.embedding(torch.zeros(4, dtype=torch.long)))
    if decoder == "moe":
        assert gates.shape == (4, 4) and torch.allclose(gates.sum(1), torch.ones(4))
    else:
        assert gates is None


def test_modality_heads_are_per_label():
    """An image decoded under head k equals the same image decoded in a batch of other labels."""
    model = DisentangledConditionalVAE(VAEConfig(**SMALL)).eval()
    with torch.no_grad():
        for p in model.decoder.output.parameters():
            p.add_(torch.randn_like(p))
        z = torch.randn(3, 16)
        batch = model.decode(z, torch.tensor([0, 1, 2]))
        alone = torch.cat([model.decode(z[i:i + 1], torch.tensor([i])) for i in range(3)])
    torch.testing.assert_close(batch, alone, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------- losses
@pytest.mark.parametrize("objective", ["elbo", "beta_tc"])
@pytest.mark.parametrize("cls", MODELS)
def test_every_loss_term_is_finite(cls, objective):
    config = VAEConfig(**SMALL, objective=objective, adversarial_weight=0.1, decoder="moe", reconstruction="mse")
    model = cls(config)
    x, y = textures(4)
    out = model(x, y)
    expected = {"recon", "kl"} | ({"mi", "tc", "dwkl", "kl_mc"} if objective == "beta_tc" else set())
    if cls is DisentangledConditionalVAE:
        expected |= {"separation", "contrastive", "adversarial", "discriminator_accuracy"}
    assert set(out.terms) == expected
    assert all(bool(torch.isfinite(v)) for v in out.terms.values()) and bool(torch.isfinite(out.loss))
    out.loss.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters() if p.grad is not None)


def test_gaussian_kl_matches_torch_distributions():
    mu, logvar = torch.randn(5, 4), torch.randn(5, 4)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    p = torch.distributions.Normal(torch.zeros(5, 4), torch.ones(5, 4))
    torch.testing.assert_close(gaussian_kl(mu, logvar), torch.distributions.kl_divergence(q, p).sum(1))


def test_separation_loss_is_bounded():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    direction = torch.randn(3, 8)
    margin = 5.0
    assert float(separation_loss(torch.zeros(6, 8), y, margin, 3)) == pytest.approx(1.0)
    values = []
    for spread in [0.0, 0.5, 1.0, 2.0, 10.0, 1e3, 1e6]:
        z = (spread * direction)[y].clone().requires_grad_(True)
        loss = separation_loss(z, y, margin, 3)
        value = float(loss.detach())
        assert 0.0 <= value <= 1.0
        values.append(value)
        if spread >= 1e3:  # every pair beyond the margin: at its floor, nothing left to push
            loss.backward()
            assert value == 0.0 and float(z.grad.abs().max()) == 0.0
    assert values == sorted(values, reverse=True) and values[-1] == 0.0
    assert float(separation_loss(torch.randn(4, 8), torch.zeros(4, dtype=torch.long), margin, 3)) == 0.0


def test_supervised_contrastive_prefers_clusters():
    y = torch.tensor([0, 0, 0, 1, 1, 1, 2, 2, 2])
    centres = torch.eye(3, 8) * 5
    clustered = centres[y] + 0.1 * torch.randn(9, 8)
    mixed = centres[y[torch.randperm(9)]] + 0.1 * torch.randn(9, 8)
    assert float(supervised_contrastive_loss(clustered, y)) < float(supervised_contrastive_loss(mixed, y))
    # perfectly clustered: the loss reaches log(#positives) = log 2 (3 per class)
    assert float(supervised_contrastive_loss(centres[y], y, 0.01)) == pytest.approx(math.log(2), abs=1e-3)
    assert float(supervised_contrastive_loss(torch.randn(3, 8), torch.arange(3))) == 0.0


@pytest.mark.parametrize("dataset_size", [None, 1000])
def test_beta_tc_terms_sum_to_the_kl(dataset_size):
    torch.manual_seed(1)
    b, d = 2048, 4
    mu, logvar = torch.randn(b, d), torch.empty(b, d).uniform_(-1.5, 0.5)
    z = mu + (0.5 * logvar).exp() * torch.randn(b, d)
    terms = beta_tc_terms(z, mu, logvar, dataset_size)
    # the decomposition identity holds exactly on the batch ...
    total = terms["mi"] + terms["tc"] + terms["dwkl"]
    assert float(total) == pytest.approx(float(terms["kl_mc"]), abs=1e-3)
    # ... and the Monte-Carlo KL estimates the closed form
    assert float(terms["kl_mc"]) == pytest.approx(float(gaussian_kl(mu, logvar).mean()), rel=0.08)


def test_gradient_reversal_flips_the_gradient():
    x = torch.randn(5, requires_grad=True)
    (grad_reverse(x, 0.5) * torch.arange(5.0)).sum().backward()
    torch.testing.assert_close(x.grad, -0.5 * torch.arange(5.0))
    w = torch.randn(5, requires_grad=True)
    torch.testing.assert_close(grad_reverse(w), w)


# ---------------------------------------------------------------------------- encoders
def test_disentangled_encoder_ignores_y():
    model = DisentangledConditionalVAE(VAEConfig(**SMALL)).eval()
    x, _ = textures(2)
    mu, logvar = model.encode(x)
    for y in (torch.zeros(6, dtype=torch.long), torch.full((6,), 2)):
        m2, l2 = model.encode(x, y)
        assert torch.equal(mu, m2) and torch.equal(logvar, l2)
        assert torch.equal(model(x, y).mu, mu)
    assert not torch.allclose(model(x, torch.zeros(6, dtype=torch.long)).x_hat, model(x, torch.full((6,), 2)).x_hat)


def test_baseline_encoder_needs_y():
    model = ConditionalVAE(VAEConfig(**SMALL)).eval()
    x, _ = textures(2)
    a = model.encode(x, torch.zeros(6, dtype=torch.long))[0]
    b = model.encode(x, torch.full((6,), 2))[0]
    assert not torch.allclose(a, b)
    with pytest.raises(ModalityError, match="pass y"):
        model.encode(x)


def test_inputs_are_checked():
    model = DisentangledConditionalVAE(VAEConfig(**SMALL))
    with pytest.raises(ModalityError, match=r"expected images \(b, 3, 16, 16\)"):
        model(torch.rand(2, 1, 16, 16), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ModalityError, match=r"expected indices 0\.\.2"):
        model(torch.rand(2, 3, 16, 16), torch.tensor([0, 5]))
    with pytest.raises(ModalityError, match="int64"):
        model(torch.rand(2, 3, 16, 16), torch.zeros(2))
    with pytest.raises(ValueError, match="channels"):
        VAEConfig(channels=2)


# ---------------------------------------------------------------------------- centroids, sampling, persistence
def test_classify_and_sample():
    x, y = textures(3)
    for cls in MODELS:
        model = cls(VAEConfig(**SMALL)).eval()
        with pytest.raises(MmtokError, match="fit_centroids"):
            model.classify(x)
        model.fit_centroids(x[y < 2], y[y < 2])  # modality "c" absent
        pred, dist = model.classify(x)
        assert pred.shape == dist.shape == (9,) and set(pred.tolist()) <= {0, 1} and bool((dist >= 0).all())
        a = model.sample("b", 4, torch.Generator().manual_seed(3))
        b = model.sample(1, 4, torch.Generator().manual_seed(3))
        assert a.shape == (4, 3, 16, 16) and torch.equal(a, b)
        assert model.sample(torch.tensor([0, 1, 1])).shape == (3, 3, 16, 16)
    with pytest.raises(MmtokError, match="no centroid for c"):
        model.sample("c", 2)
    # the disentangled model samples around the centroid: z_modality of the sample's latent
    z = model.sample_latent(torch.tensor([1, 1]), torch.Generator().manual_seed(0), 0.0)
    torch.testing.assert_close(z[:, 8:], model.centroids[[1, 1]])


@pytest.mark.parametrize("cls", MODELS)
def test_save_load_round_trip(cls, tmp_path):
    model = cls(VAEConfig(**SMALL, adversarial_weight=0.1, decoder="heads"))
    x, y = textures(3)
    with torch.no_grad():  # non-trivial head parameters
        for p in model.decoder.output.parameters():
            p.add_(0.3 * torch.randn_like(p))
    model.fit_centroids(x, y)
    model.eval()
    model.save(tmp_path / "vae")
    assert sorted(p.name for p in (tmp_path / "vae").iterdir()) == ["config.json", "model.safetensors"]
    for loaded in (cls.load(tmp_path / "vae"), load_vae(tmp_path / "vae")):
        assert type(loaded) is cls and loaded.config == model.config and not loaded.training
        a, b = model(x, y), loaded(x, y)
        assert torch.equal(a.x_hat, b.x_hat) and torch.equal(a.mu, b.mu) and torch.equal(a.loss, b.loss)
        assert torch.equal(loaded.centroids, model.centroids)
        assert torch.equal(loaded.classify(x)[0], model.classify(x)[0])
    other = DisentangledConditionalVAE if cls is ConditionalVAE else ConditionalVAE
    with pytest.raises(MmtokError, match=f"holds a {cls.__name__}"):
        other.load(tmp_path / "vae")


def test_load_refuses_a_config_that_does_not_match(tmp_path):
    model = DisentangledConditionalVAE(VAEConfig(**SMALL))
    model.save(tmp_path)
    raw = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**raw, "temperature": 0.2}))  # a loss setting: fine
    assert DisentangledConditionalVAE.load(tmp_path).config.temperature == 0.2
    (tmp_path / "config.json").write_text(json.dumps({**raw, "latent_modality": 4}))
    with pytest.raises(DamagedFileError, match="latent_modality: config.json has 4, the weights were trained with 8"):
        DisentangledConditionalVAE.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "adversarial_weight": 0.5}))  # adds a discriminator
    with pytest.raises(DamagedFileError, match="discriminator.* missing from the file"):
        DisentangledConditionalVAE.load(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({**raw, "depth": 3}))
    with pytest.raises(DamagedFileError, match="not a VAEConfig"):
        DisentangledConditionalVAE.load(tmp_path)


# ---------------------------------------------------------------------------- training
def test_balanced_batches_see_rare_modalities():
    labels = torch.tensor([0] * 97 + [1] * 2 + [2])
    idx = balanced_batches(labels, 3000, torch.Generator().manual_seed(0))
    share = torch.bincount(labels[idx], minlength=3).float() / 3000
    assert torch.allclose(share, torch.full((3,), 1 / 3), atol=0.04)


def test_training_is_deterministic_and_restores_threads():
    x, y = textures(4)
    torch.set_num_threads(1)
    config = VAEConfig(**SMALL, objective="beta_tc", adversarial_weight=0.1)
    initial = DisentangledConditionalVAE(config).state_dict()
    runs = []
    for _ in range(2):
        model = DisentangledConditionalVAE(config)
        model.load_state_dict(initial)
        history = train_vae(model, x, y, steps=12, batch_size=8, seed=5, threads=2)
        runs.append(([{k: v for k, v in h.items() if k != "images_per_s"} for h in history], model.state_dict()))
    assert torch.get_num_threads() == 1
    assert runs[0][0] == runs[1][0] and [h["step"] for h in runs[0][0]] == [10, 12]
    assert all(torch.equal(runs[0][1][k], runs[1][1][k]) for k in runs[0][1])
    assert {"loss", "recon", "kl", "mi", "tc", "dwkl", "separation", "contrastive", "adversarial", "kl_scale",
            "lr", "grad_norm"} <= set(runs[0][0][0])


def test_short_training_clusters_z_modality():
    """80 seeded steps on 3 synthetic textures: held-out nearest-centroid accuracy of z_modality
    far above chance (1/3) and above the untrained encoder's, and a lower loss."""
    x_train, y_train = textures(40, seed=0)
    x_test, y_test = textures(20, seed=1)
    model = DisentangledConditionalVAE(VAEConfig(**SMALL))
    model.fit_centroids(x_train, y_train)
    untrained = float((model.classify(x_test)[0] == y_test).float().mean())
    model.eval()
    with torch.no_grad():
        before = model(x_test, y_test)
    history = train_vae(model, x_train, y_train, steps=80, batch_size=32, seed=0)
    accuracy = float((model.classify(x_test)[0] == y_test).float().mean())
    with torch.no_grad():
        after = model(x_test, y_test)
    assert accuracy >= 0.9 and accuracy >= untrained + 0.3, (accuracy, untrained)
    assert float(after.loss) < float(before.loss)
    assert float(after.terms["separation"]) < float(before.terms["separation"])
    assert float(after.terms["contrastive"]) < float(before.terms["contrastive"])
    assert history[-1]["step"] == 80 and all(math.isfinite(v) for h in history for v in h.values())

"""The FLOP model behind the benchmarks' ideals (bench/speed.py): hand-computed expectations."""
import importlib.util
import sys

import pytest

from conftest import REPO_ROOT


@pytest.fixture(scope="module")
def speed():
    sys.path.insert(0, str(REPO_ROOT / "scripts"))
    spec = importlib.util.spec_from_file_location("bench_speed", REPO_ROOT / "bench" / "speed.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_joint_attention_ideal_is_rows_over_running_rows(speed):
    """Joint attention (Flux): every term is (T + n) x something fixed, so the ideal is (T + N) / (T + n)."""
    flux = speed.MODELS["flux-dev"]
    for n in (2048, 1024, 512):
        assert speed.flop_ideal(flux, [n], 4096, 512) == pytest.approx((512 + 4096) / (512 + n), rel=1e-12)


def test_cross_attention_forward_flops_by_hand(speed):
    """Wan: self-attention over the video tokens, cross-attention to the text (its k/v projected once)."""
    wan = speed.MODELS["wan21-14b"]
    d, r, layers, n, N, T = 5120, 13824 / 5120, 40, 1000, 32760, 512
    per_layer = (n * (4 + 2 * r) * d * d * 2 + n * N * 4 * d
                 + (2 * n + 2 * T) * d * d * 2 + n * T * 4 * d)
    assert speed.forward_flops(wan, n, N, T) == pytest.approx(layers * per_layer, rel=1e-12)
    # the text's k/v projections do not shrink with the running tokens: the ideal stays under N / n
    ideal = speed.flop_ideal(wan, [N // 8], N, T)
    assert 7.5 < ideal < 8.0


def test_video_latents_and_tokens(speed):
    wan = speed.MODELS["wan21-14b"]
    shape = speed.latent_shape(wan, 480, 81)
    assert shape == (1, 16, 21, 60, 104) and speed.image_tokens(shape) == 21 * 30 * 52 == 32760
    assert speed.image_tokens(speed.latent_shape(wan, 720, 81)) == 21 * 45 * 80
    # HunyuanVideo 1.5: a 16x VAE with 32 channels, one latent pixel a token
    hv15 = speed.MODELS["hunyuan-video-1.5"]
    shape = speed.latent_shape(hv15, 720, 121)
    assert shape == (1, 32, 31, 45, 80) and speed.image_tokens(shape, hv15.patch) == 31 * 45 * 80 == 111600


def test_attention_share_grows_with_tokens(speed):
    wan = speed.MODELS["wan21-14b"]
    small, large = speed.attention_share(wan, 4096, 512), speed.attention_share(wan, 75600, 512)
    assert 0 < small < large < 1


def audio_terms(n, N, T, A, d, a, ra, w):
    """By hand: an audio block (width a, MLP ratio ra) over its A tokens always running, with its text cross-attention;
    the video's n running queries (of N) against the audio's keys at width w (q/out d x w, the audio's k/v a x w); the
    audio's queries against every video token's keys at its own width (k/v of the running rows only)."""
    return (A * (4 + 2 * ra) * a * a * 2 + A * A * 4 * a + (2 * A + 2 * T) * a * a * 2 + A * T * 4 * a
            + (n * 2 * d * w + A * 2 * a * w) * 2 + n * A * 4 * w
            + (A * 2 * a * a + n * 2 * d * a) * 2 + A * N * 4 * a)


def test_an_audio_stream_by_hand(speed):
    """LTX-2: the video's terms (as LTX-Video's) plus the audio's own layers, the video's running queries against the
    audio's keys and the audio's queries against every video token's keys (projections of the running rows only)."""
    ltx2 = speed.MODELS["ltx2-19b"]
    d, a, r, layers, n, N, T, A = 4096, 2048, 4.0, 48, 1000, 6144, 512, 121
    video = n * (4 + 2 * r) * d * d * 2 + n * N * 4 * d + (2 * n + 2 * T) * d * d * 2 + n * T * 4 * d
    audio = audio_terms(n, N, T, A, d, a, r, w=a)
    assert speed.forward_flops(ltx2, n, N, T, A) == pytest.approx(layers * (video + audio), rel=1e-12)
    assert speed.forward_flops(ltx2, n, N, T) == pytest.approx(layers * video, rel=1e-12)
    # 121 frames at 25 fps: 121 audio tokens; the audio, always running, keeps the ideal under LTX-Video 13B's
    assert speed.audio_tokens(ltx2, 121) == 121 and speed.audio_tokens(speed.MODELS["ltxv-13b"], 121) == 0
    assert speed.flop_ideal(ltx2, [N // 8], N, T, A) < speed.flop_ideal(ltx2, [N // 8], N, T)


def test_an_audio_tower_fused_with_part_of_the_video_blocks_by_hand(speed):
    """Prism: Wan 14B's terms over its 40 video blocks, and in the first 30 (the fused ones) the audio tower's block
    (1536 wide, an 8960 MLP), the video's running queries against the audio's keys at the video's width (q/out d x d,
    the audio's k/v a x d) and the audio's queries against every video token's keys (k/v of the running rows only)."""
    prism, wan = speed.MODELS["prism"], speed.MODELS["wan21-14b"]
    d, a, ra, n, N, T, A = 5120, 1536, 8960 / 1536, 4000, 32760, 512, 169
    audio = audio_terms(n, N, T, A, d, a, ra, w=d)
    assert speed.forward_flops(prism, n, N, T, A) == pytest.approx(speed.forward_flops(wan, n, N, T) + 30 * audio,
                                                                   rel=1e-12)
    # 81 frames at 24 fps: 3.375 s of 48 kHz audio, a token per 960 samples (Prism Prepare AV's count)
    assert speed.audio_tokens(prism, 81) == 169
    assert speed.flop_ideal(prism, [N // 8], N, T, A) < speed.flop_ideal(wan, [N // 8], N, T)


def test_an_audio_block_fused_with_every_video_block_by_hand(speed):
    """Kandinsky 6 Pro: per fused block (60) a video block 4096 wide with cross-attention to the prompt, and the audio's
    block (2048 wide, a 7168 MLP, its own text cross-attention), the video's running queries against the audio's keys
    at the video's width (q/out d x d, the audio's k/v a x d) and the audio's queries against every video token's keys
    (k/v of the running rows only)."""
    k6 = speed.MODELS["kandinsky6-pro"]
    d, r, a, ra, n, N, T, A = 4096, 4.0, 2048, 3.5, 4000, 48360, 512, 218
    video = n * (4 + 2 * r) * d * d * 2 + n * N * 4 * d + (2 * n + 2 * T) * d * d * 2 + n * T * 4 * d
    audio = audio_terms(n, N, T, A, d, a, ra, w=d)
    assert speed.forward_flops(k6, n, N, T, A) == pytest.approx(60 * (video + audio), rel=1e-12)
    # 121 frames at 24 fps: 5.04 s of 44.1 kHz audio, a token per 1024 samples (Kandinsky 6 Empty Latent's count)
    assert speed.audio_tokens(k6, 121) == 218
    assert speed.flop_ideal(k6, [N // 8], N, T, A) < speed.flop_ideal(k6, [N // 8], N, T)


def test_a_pose_branch_by_hand(speed):
    """Wan Animate 2: Wan's terms over the video (its first latent frame the reference image's) plus, per layer, the
    running queries outside that frame against one pose frame's keys, and the pose branch (a frame fewer): its whole
    blocks every step, or with WanAnimate2Cache only its k/v projections."""
    run, cached, wan = (speed.MODELS[name] for name in ("wan-animate2-14b", "wan-animate2-14b-cached", "wan21-14b"))
    shape = speed.latent_shape(run, 480, 81)
    assert shape == (1, 16, 22, 60, 104)                     # 21 frames of video after the reference image's
    d, r, layers, F, T = 5120, 13824 / 5120, 40, 22, 512
    N = speed.image_tokens(shape)
    frame, n = N // F, 4000
    P = N - frame
    video = speed.forward_flops(wan, n, N, T) / layers + n * (F - 1) / F * frame * 4 * d
    whole = P * (4 + 2 * r) * d * d * 2 + P * P * 4 * d + (2 * P + 2 * T) * d * d * 2 + P * T * 4 * d
    assert speed.forward_flops(run, n, N, T, frames=F) == pytest.approx(layers * (video + whole), rel=1e-12)
    assert speed.forward_flops(cached, n, N, T, frames=F) == pytest.approx(layers * (video + P * 2 * d * d * 2),
                                                                           rel=1e-12)
    # the pose branch does not shrink with the running tokens: without the cache the ideal stays under 2x
    assert speed.flop_ideal(run, [N // 8], N, T, frames=F) < 2 < speed.flop_ideal(cached, [N // 8], N, T, frames=F)


def test_a_controlnet_run_whole_by_hand(speed):
    """Wan with the Uni3C ControlNet: Wan's terms plus, whatever runs, the ControlNet's 20 blocks (1024 wide, an 8x MLP)
    over every token with their output projections to Wan's width; it keeps the ideal under Wan's alone."""
    uni3c, wan = speed.MODELS["wan21-14b-uni3c"], speed.MODELS["wan21-14b"]
    N, T, n, w = 32760, 512, 4000, 1024
    branch = 20 * (N * (4 + 2 * 8) * w * w * 2 + N * N * 4 * w + N * w * 5120 * 2)
    assert speed.forward_flops(uni3c, n, N, T) == pytest.approx(speed.forward_flops(wan, n, N, T) + branch, rel=1e-12)
    assert 0.07 < branch / speed.forward_flops(wan, N, N, T) < 0.08     # the README's "7% at 480p x 81 frames"
    assert speed.flop_ideal(uni3c, [N // 8], N, T) < speed.flop_ideal(wan, [N // 8], N, T)


def test_a_tower_of_the_models_blocks_on_the_running_tokens_or_whole_by_hand(speed):
    """Qwen-Image 2.1 with its Fun ControlNet: on the running tokens the tower's 16 blocks cost what the model's do, with
    their output projections (the ideal stays the model's); whole (before) they cost their blocks over every target
    token whatever runs, and the ideal at 0.125 falls under half the model's."""
    base, tower, whole = (speed.MODELS[name] for name in ("qwen-image-21", "qwen-image-21-fun-cn",
                                                          "qwen-image-21-fun-cn-whole"))
    N, T, n, d, r = 4096, 512, 512, 4096, 4.5
    layer = (T + n) * (4 + 2 * r) * d * d * 2 + (T + n) * (T + N) * 4 * d
    assert speed.forward_flops(base, n, N, T) == pytest.approx(32 * layer, rel=1e-12)
    assert speed.forward_flops(tower, n, N, T) == pytest.approx(48 * layer + 16 * n * d * d * 2, rel=1e-12)
    branch = 16 * (N * (4 + 2 * r) * d * d * 2 + N * N * 4 * d + N * d * d * 2)
    assert speed.forward_flops(whole, n, N, T) == pytest.approx(32 * layer + branch, rel=1e-12)
    assert speed.flop_ideal(whole, [n], N, T) < speed.flop_ideal(tower, [n], N, T) / 2


def test_the_ideal_counts_each_window_forward(speed):
    """In context windows every evaluation is one forward per window, over the window's tokens: the ideal
    sums those forwards (`calls_ideal`). With one forward per evaluation over the whole latent it is
    `flop_ideal`."""
    from types import SimpleNamespace as Record
    wan = speed.MODELS["wan21-14b"]
    N, T, window = 32760, 512, 13 * 1560                 # 21 frames of 1,560 tokens; windows of 13 frames
    whole = [Record(grid_tokens=N, image_tokens=n) for n in (N, N // 4, N // 8)]
    assert speed.calls_ideal(wan, whole, T) == pytest.approx(speed.flop_ideal(wan, [N, N // 4, N // 8], N, T),
                                                             rel=1e-12)
    windowed = [Record(grid_tokens=window, image_tokens=n) for n in (window, window, window // 4, window // 3)]
    full = 4 * speed.forward_flops(wan, window, window, T)
    run = (2 * speed.forward_flops(wan, window, window, T) + speed.forward_flops(wan, window // 4, window, T)
           + speed.forward_flops(wan, window // 3, window, T))
    assert speed.calls_ideal(wan, windowed, T) == pytest.approx(full / run, rel=1e-12)

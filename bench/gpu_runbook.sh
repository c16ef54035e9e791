#!/usr/bin/env bash
# The GPU measurements, in parts that each fit one 10-minute device call. Build .dev first
# (scripts/device_bundle.sh), then on the device: `bash bench/gpu_runbook.sh check forward` with carry [".dev"].
# Logs and JSON land in $OUT; copy the tables into docs/BENCHMARKS.md with the date and machine.
#   check      CUDA-graph, kernel and policy-on-device tests on the GPU, each Triton kernel against its reference
#              (bench/kernels.py), Quickshift timing (64², 128², video; Triton and reference),
#              each policy's launches / syncs / time per evaluation (bench/policy_cost.py) (~3 min)
#   forward    one Flux-dev forward at 1024², batch 1 and 2, eager and graphed      (~4 min)
#   counts1024 graphed Flux-dev forward, 1024², 256 text tokens, batch 1 and 2, per active count 256..1536
#              by 64: where GEMM tiles and waves make a count cheap or dear (to set the token grid from)   (~3 min)
#   compile1024 one Flux-dev forward at 1024², batch 1 and 2, under torch.compile (inductor, as ComfyUI's
#              TorchCompileModel): fewer launches per forward, the other lever at batch 1 besides CUDA graphs (~8 min)
#   agreement  graphed forwards with bf16 and fp8 K/V caches: speed, cache size,
#              active-token error vs dense                                        (~3 min)
#   speed1024  end-to-end sampling, Flux-dev 1024², cfg 3.5 (batch 2), CUDA graphs  (~5 min)
#   speed1024b the same at cfg 1 (batch 1): one call each (both in one ran past 10 minutes)   (~4 min)
#   graphs1024 Flux-dev 1024² RAS at 0.125: static captured vs static eager vs dynamic: what graphs give end to end (~4 min)
#   grid1024   Flux-dev 1024² RAS and SDiT at 0.125, timed on a new seed: token grid 64 (default) vs off (~6 min)
#   grid128    the same at 0.125 with a grid of 128 tokens (whole 128-row GEMM tiles with a 256-token prompt) (~3 min)
#   lumina0125 Lumina 2 at 1024², 0.125, static RAS (per-layer graphs captured) vs dynamic (eager) (~3 min)
#   qwen0125   Qwen-Image 20B at 1024², 0.125, static RAS (per-block graphs captured) vs dynamic (eager) (~5 min)
#   cosmos0125 Cosmos Predict2 2B (Anima's DiT) at 1024², 0.125, static RAS (per-block graphs captured) vs dynamic
#              (eager): a 2B model at batch 1 is the most launch-bound of all                  (~3 min)
#   wan0125    Wan 2.1 14B as an image model (one frame) at 1024², 0.125, static RAS (per-block graphs captured) vs
#              dynamic (eager), cfg 5 and 1: what Wan text-to-image users get                       (~5 min)
#   models0125 SD3.5-large and Lumina 2 at 1024², cfg 3.5, ratio 0.125                (~3 min)
#   models1024 SD3.5-large and Lumina 2 at 1024², cfg 3.5 and 1, every ratio          (~8 min)
#   cosmos1024 Cosmos Predict2 2B (Anima's DiT) at 1024², cfg 4 and 1, every ratio                 (~5 min)
#   ltxv512    LTX-Video 13B, 768 x 512 x 97 frames, cfg 3 (batch 2), every ratio (dynamic schedules: eager) (~5 min)
#   ltxv0125   the same at 0.125, static RAS (its 4,992 tokens under the graph bound: per-block graphs captured) vs
#              dynamic (eager)                                                                   (~4 min)
#   speed2048  Flux-dev at 2048², cfg 3.5, profiled at 0.125 only                  (~8 min)
#   controlnet1024 Flux-dev with an InstantX-Union-size Flux ControlNet (5 + 10 blocks, Apply ControlNet) at 1024²,
#              cfg 3.5, RAS and SDiT at 0.25/0.125: the ControlNet token-sparse with the model (~6 min)
#   controlnet1024sd35 SD3.5 Large with an SD3.5 ControlNet of Stability's size (19 image-only blocks, Apply
#              ControlNet) at 1024², cfg 3.5, RAS and SDiT at 0.25/0.125: the ControlNet token-sparse (~5 min)
#   video480q  Wan 2.1 14B, 480p x 81 frames, cfg 1, 8 steps, static RAS 0.25: dense vs sparse forward (~2 min)
#   video480w  Wan 2.1 14B, 480p x 161 frames in three context windows of 81, cfg 1, 8 steps, static RAS 0.25: what
#              windows cost against the same run unwindowed (video480q); the ideal counts each window's forward (~5 min)
#   video480   Wan 2.1 14B and HunyuanVideo, 480p x 81 frames, cfg 5 (batch 2), 28 steps, RAS and SDiT  (~2 x 10 min:
#              one model per call: VIDEO_MODEL=hunyuan-video for the second; hunyuan-video-1.5 and wan21-vace-14b
#              also run, same command)
#   video720q  Wan 2.1 14B, 720p x 81 frames, cfg 5 (batch 2), 8 steps, static RAS 0.125, fp8 K/V cache: the
#              bf16 cache alone would be 115 GiB at batch 2, too much beside the weights on 141 GiB   (~6 min)
#   newest1024 on a newer ComfyUI (carry .dev-newest alone, from `scripts/device_bundle.sh --newest TREE`):
#              Flux-dev 1024², cfg 3.5 and 1, RAS and SDiT at 0.25/0.125, with its default dynamic VRAM and
#              with legacy loading: what users of the newest ComfyUI get                     (~9 min)
#   newestcheck the graph tests with the real CUDA backend on the newer tree (carry .dev-newest): the graphed families
#              ComfyUI 0.3.75 lacks (LTX-2, Z-Image Omni, Anima, Kandinsky 5, ...), and replays with the
#              QuantizedTensor weights of fp8_scaled and the mixed-precision checkpoints (nvfp4, mxfp8, int8) (~3 min)
#   newestqwenfun Qwen-Image 20B with a Fun ControlNet of Qwen-Image 2512's Fun ControlNet Union's size (5 blocks;
#              newer ComfyUI only; carry .dev-newest) at 1024², cfg 4, RAS and SDiT at 0.25/0.125, token-sparse (~6 min)
#   newestzimagefun Z-Image 6B alone and with its Fun ControlNet Union 2.1 (newer ComfyUI only; carry .dev-newest) at
#              1024², cfg 1 (Turbo), RAS and SDiT at 0.25/0.125, the ControlNet token-sparse          (~6 min)
#   newestltx2 LTX-2 19B (newer ComfyUI only; carry .dev-newest), 768 x 512 x 121 frames with audio, cfg 3 (batch 2),
#              every ratio, RAS and SDiT (eager)                                                   (~6 min)
#   memory24   Flux-dev bf16 at 1024², cfg 3.5, as on a 24-GiB GPU (--vram-gib): the K/V cache in ComfyUI's
#              memory plan (weights offloaded for it), then without the plan (expected: the cache's OOM error) (~6 min)
#   train      the demo model at 512² (8 minutes of training)                    (~9 min)
#   fidelity   PSNR/SSIM at N = 64 on the shipped demo model                     (~8 min)
# Next GPU session (15 device minutes all told, the machine's start included; 10 a call; no machine starts
# with under 4 left), in order of what is open (issue 17, then 19):
#   1. check graphs1024 (one call, ~6 min: CUDA correctness first, then what graphs give end to end)
#   2. counts1024 on the still-warm machine if 4 minutes are left; give_back otherwise
#   later sessions: grid1024; newest1024 then newestcheck newestltx2 newestqwenfun newestzimagefun (their own carry); memory24; grid128 speed1024;
#   speed1024b lumina0125 qwen0125 cosmos0125 wan0125; then compile1024, agreement (fp8 cache with its new kernel),
#   controlnet1024, controlnet1024sd35, video480q, video480w, video480 (one call per VIDEO_MODEL), video720q, models1024, cosmos1024, ltxv512,
#   ltxv0125, speed2048, train as time allows.
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
if [ -d .dev/whl ]; then          # ComfyUI 0.3.75 (scripts/device_bundle.sh): every part but newest*
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .dev/whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site COMFYUI_PATH=$PWD/.dev/comfyui
fi
if [ -f .dev-newest/comfyui.tgz ]; then   # a newer ComfyUI (device_bundle.sh --newest): the newest* parts
  mkdir -p /tmp/comfyui-newest && tar -C /tmp/comfyui-newest -xzf .dev-newest/comfyui.tgz || exit 1
  python3 -m pip install -q --no-index --no-deps --target /tmp/site-newest .dev-newest/whl/*.whl || exit 1
fi
newest() { PYTHONPATH=/tmp/site-newest COMFYUI_PATH=/tmp/comfyui-newest "$@"; }
out=${OUT:-/tmp/gpu_runbook}
mkdir -p "$out"
day=$(date +%F)
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | tee "$out/machine.txt"
python3 -c "import torch; print('torch', torch.__version__)" | tee -a "$out/machine.txt"

for part in "$@"; do
  echo "=== $part"
  case $part in
    check)
      # the graph tests with the real backend only: their CPU stand-in runs in CI
      SDIT_TESTS_ON_GPU=1 python3 -m pytest -q -k "not stand-in" tests/test_forward_graphs.py tests/test_kernels.py \
        tests/test_policies_on_device.py 2>&1 | tee "$out/check.log"
      # replays with fp8 weights (Load Diffusion Model's fp8_e4m3fn, fp8_scaled checkpoints) dequantized inside the graphs
      SDIT_TESTS_ON_GPU=1 python3 -m pytest -q -k "replayed and cuda" tests/test_quantized_weights.py 2>&1 \
        | tee -a "$out/check.log"
      python3 tests/kernel_checks.py 2>&1 | tee -a "$out/check.log"       # the compiled Triton kernels, on the GPU
      # each kernel against its reference alone: GPU time and bandwidth (should shared-row K/V writes use Triton?)
      python3 bench/kernels.py --device cuda --json "$out/kernels_cuda_$day.json" 2>&1 | tee -a "$out/check.log"
      for grid in 64 128; do        # the window pass as Triton kernels (the default), then its PyTorch reference
        for kernels in auto torch; do
          SDIT_KERNELS=$kernels python3 bench/segmentation.py --device cuda --backends torch --grid $grid --batch 2 \
            --json "$out/segmentation_cuda_${grid}_${kernels}_$day.json" 2>&1 | tee -a "$out/check.log"
        done
      done
      python3 bench/policy_cost.py --device cuda --grid 64 128 --json "$out/policy_cost_cuda_$day.json" 2>&1 | tee -a "$out/check.log"
      for video in "21 30 52" "21 45 80"; do       # Wan 480p and 720p x 81 frames: SDiT's 3-D Quickshift
        timeout 120 python3 bench/segmentation.py --device cuda --video $video \
          --json "$out/segmentation_cuda_video_${video// /x}_$day.json" 2>&1 | tee -a "$out/check.log"
      done ;;
    forward)
      python3 bench/speed_forward.py --size flux-dev --res 1024 --batch 1 2 --json "$out/forward_eager_$day.json" 2>&1 | tee "$out/forward.log"
      python3 bench/speed_forward.py --size flux-dev --res 1024 --batch 1 2 --cuda-graphs \
        --json "$out/forward_graphs_$day.json" 2>&1 | tee -a "$out/forward.log" ;;
    counts1024)
      timeout 400 python3 bench/speed_forward.py --size flux-dev --res 1024 --text 256 --batch 1 2 --graphs-only \
        --count-sweep 256 1536 64 --iters 5 --warmup 2 --json "$out/counts1024_$day.json" 2>&1 | tee "$out/counts1024.log" ;;
    compile1024)     # the first forward of each shape compiles (minutes): few iterations, one call per batch size
      for batch in 1 2; do
        timeout 290 python3 bench/speed_forward.py --size flux-dev --res 1024 --batch $batch --torch-compile inductor \
          --iters 5 --warmup 2 --json "$out/${part}_b${batch}_$day.json" 2>&1 | tee -a "$out/$part.log"
      done ;;
    agreement)
      for cache in "model dtype" fp8_e4m3; do
        timeout 150 python3 bench/speed_forward.py --size flux-dev --res 1024 --batch 1 2 --cuda-graphs --iters 3 --warmup 2 \
          --kv-cache "$cache" --json "$out/agreement_${cache// /_}_$day.json" 2>&1 | tee -a "$out/agreement.log"
      done ;;
    speed1024|speed1024b)
      cfg=3.5; [ "$part" = speed1024b ] && cfg=1
      timeout 570 python3 bench/speed.py --models flux-dev --res 1024 --cfg $cfg --cuda-graphs \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    graphs1024)      # what CUDA graphs give end to end: static RAS captured (default rule) and eager, and the dynamic schedule
      timeout 200 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 1 --methods RAS-static RAS --ratios 0.125 \
        --cuda-graphs --profile-ratios --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log"
      SDIT_GRAPH_MIN_USES=1000000 timeout 150 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 1 \
        --methods RAS-static --ratios 0.125 --cuda-graphs --profile-ratios --json "$out/${part}_eager_$day.json" 2>&1 \
        | tee -a "$out/$part.log" ;;
    grid1024)        # what the token-count grid gives a user's next seed (new counts cost attention plans)
      for grid in 64 1; do
        timeout 280 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 1 --ratios 0.125 --cuda-graphs \
          --profile-ratios --fresh-seed --token-grid $grid --json "$out/${part}_grid${grid}_$day.json" 2>&1 | tee -a "$out/$part.log"
      done ;;
    grid128)         # does a coarser grid pay? counts at odd multiples of 64 leave half a GEMM tile idle
      timeout 280 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 1 --ratios 0.125 --cuda-graphs \
        --profile-ratios --fresh-seed --token-grid 128 --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    lumina0125)      # Lumina's per-layer CUDA graphs: a static count is captured, the dynamic schedule runs eagerly
      timeout 280 python3 bench/speed.py --models lumina2 --res 1024 --cfg 3.5 1 --methods RAS-static RAS --ratios 0.125 \
        --cuda-graphs --profile-ratios --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    qwen0125)        # Qwen-Image's per-block CUDA graphs: a static count is captured, the dynamic schedule runs eagerly
      timeout 400 python3 bench/speed.py --models qwen-image --res 1024 --cfg 4 1 --methods RAS-static RAS --ratios 0.125 \
        --cuda-graphs --profile-ratios --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    cosmos0125)      # Cosmos's per-block CUDA graphs: a static count is captured, the dynamic schedule runs eagerly
      timeout 280 python3 bench/speed.py --models cosmos-predict2-2b --res 1024 --cfg 4 1 --methods RAS-static RAS \
        --ratios 0.125 --cuda-graphs --profile-ratios --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    wan0125)         # Wan's per-block CUDA graphs on one frame (a video above SDIT_GRAPH_MAX_TOKENS runs eagerly)
      timeout 330 python3 bench/speed.py --models wan21-14b --res 1024 --frames 1 --cfg 5 1 --text 512 \
        --methods RAS-static RAS --ratios 0.125 --cuda-graphs --profile-ratios --json "$out/${part}_$day.json" 2>&1 \
        | tee "$out/$part.log" ;;
    models0125)      # SD3.5-large and Lumina 2 at the lowest ratio only
      timeout 240 python3 bench/speed.py --models sd35-large lumina2 --res 1024 --ratios 0.125 --cuda-graphs \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    controlnet1024)  # a Flux ControlNet of InstantX Union's size beside Flux-dev, token-sparse with it
      timeout 420 python3 bench/speed.py --models flux-dev-union-cn --res 1024 --cfg 3.5 --ratios 0.25 0.125 \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    controlnet1024sd35)  # an SD3.5 ControlNet of Stability's SD3.5 Large ones' size, token-sparse with the model
      timeout 400 python3 bench/speed.py --models sd35-large-cn --res 1024 --cfg 3.5 --ratios 0.25 0.125 \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    models1024)
      python3 bench/speed.py --models sd35-large lumina2 --res 1024 --cfg 3.5 1 --cuda-graphs \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    cosmos1024)
      timeout 450 python3 bench/speed.py --models cosmos-predict2-2b --res 1024 --cfg 4 1 --cuda-graphs \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    ltxv512)
      timeout 450 python3 bench/speed.py --models ltxv-13b --res 512 --frames 97 --cfg 3 --text 128 \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    ltxv0125)
      timeout 330 python3 bench/speed.py --models ltxv-13b --res 512 --frames 97 --cfg 3 --text 128 \
        --methods RAS-static RAS --ratios 0.125 --cuda-graphs --profile-ratios --json "$out/${part}_$day.json" 2>&1 \
        | tee "$out/$part.log" ;;
    speed2048)
      python3 bench/speed.py --models flux-dev --res 2048 --cuda-graphs --profile-ratios 0.125 \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    video480q)
      timeout 170 python3 bench/speed.py --models wan21-14b --res 480 --frames 81 --cfg 1 --steps 8 --text 512 \
        --methods RAS-static --ratios 0.25 --profile-ratios --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    video480w)       # what context windows cost: Wan 2.1 14B, 161 frames (41 latent) in windows of 81 (21 latent) overlapping by
                     # 29 (8 latent): three windows, a K/V cache each (25 GiB bf16 at batch 1; fp8 where the GPU has < 100 GB)
      mem=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -n 1 | tr -dc 0-9)
      cache=(); [ "${mem:-0}" -lt 100000 ] && cache=(--kv-cache fp8_e4m3)
      timeout 480 python3 bench/speed.py --models wan21-14b --res 480 --frames 161 --context-windows 21 8 --cfg 1 \
        --steps 8 --text 512 --methods RAS-static --ratios 0.25 --profile-ratios ${cache[@]+"${cache[@]}"} \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    video480)
      timeout 570 python3 bench/speed.py --models "${VIDEO_MODEL:-wan21-14b}" --res 480 --frames 81 --cfg 5 --text 512 \
        --cuda-graphs --profile-ratios 0.125 --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    video720q)
      timeout 570 python3 bench/speed.py --models "${VIDEO_MODEL:-wan21-14b}" --res 720 --frames 81 --cfg 5 --steps 8 \
        --text 512 --methods RAS-static --ratios 0.125 --kv-cache fp8_e4m3 --profile-ratios \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    memory24)        # weights in RAM, ComfyUI's plan and torch's allocator held to 24 GiB: does the plan make room?
      timeout 330 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 --methods RAS-static --ratios 0.25 \
        --steps 8 --vram-gib 24 --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log"
      timeout 200 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 --methods RAS-static --ratios 0.25 \
        --steps 8 --vram-gib 24 --no-memory-plan --json "$out/${part}_noplan_$day.json" 2>&1 | tail -n 30 \
        | tee -a "$out/$part.log" ;;
    train)
      python3 bench/train_tiny_dit.py --device cuda --size 512 --hidden 384 --batch 32 --minutes 8 --seed 21 \
        --out "$out/sdit_demo_flux_512.safetensors" 2>&1 | tail -n 60 | tee "$out/train.log" ;;
    fidelity)
      python3 bench/fidelity.py --device cuda --seeds 8 --classes 8 --json "$out/fidelity_cuda_n64_$day.json" 2>&1 \
        | tee "$out/fidelity.log" ;;
    newest1024)      # what users of a newer ComfyUI get: its default dynamic VRAM (weights staged by comfy-aimdo,
                     # CUDA graphs refused), then the same tree loading the model the legacy way, graphs allowed
      [ -f .dev-newest/comfyui.tgz ] || { echo "newest1024 needs .dev-newest in carry"; continue; }
      newest timeout 280 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 1 --ratios 0.25 0.125 \
        --dynamic-vram --cuda-graphs --profile-ratios 0.125 --json "$out/${part}_dynamic_$day.json" 2>&1 | tee "$out/$part.log"
      newest timeout 250 python3 bench/speed.py --models flux-dev --res 1024 --cfg 3.5 1 --ratios 0.25 0.125 \
        --cuda-graphs --profile-ratios 0.125 --json "$out/${part}_legacy_$day.json" 2>&1 | tee -a "$out/$part.log" ;;
    newestcheck)
      [ -f .dev-newest/comfyui.tgz ] || { echo "newestcheck needs .dev-newest in carry"; continue; }
      SDIT_TESTS_ON_GPU=1 newest timeout 300 python3 -m pytest -q -k "not stand-in" tests/test_forward_graphs.py 2>&1 \
        | tee "$out/$part.log"
      # replays with QuantizedTensor weights (fp8_scaled, nvfp4, mxfp8, int8) dequantized inside the graphs
      SDIT_TESTS_ON_GPU=1 newest timeout 120 python3 -m pytest -q -k "replayed and cuda" tests/test_quantized_weights.py \
        2>&1 | tee -a "$out/$part.log" ;;
    newestltx2)      # LTX-2 19B, a newer ComfyUI's model: 768 x 512 x 121 frames with its audio, cfg 3 (batch 2), every
                     # ratio, the model loaded the legacy way (dynamic schedules: eager)
      [ -f .dev-newest/comfyui.tgz ] || { echo "newestltx2 needs .dev-newest in carry"; continue; }
      newest timeout 450 python3 bench/speed.py --models ltx2-19b --res 512 --frames 121 --cfg 3 --text 128 \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    newestqwenfun)   # Qwen-Image 20B with a Fun ControlNet of Qwen-Image 2512's Fun ControlNet Union's size (5 blocks,
                     # newer ComfyUI's QwenFunControlNet), token-sparse with the model
      [ -f .dev-newest/comfyui.tgz ] || { echo "newestqwenfun needs .dev-newest in carry"; continue; }
      newest timeout 420 python3 bench/speed.py --models qwen-image-fun-cn --res 1024 --cfg 4 --ratios 0.25 0.125 \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    newestzimagefun) # Z-Image 6B, then with a Z-Image Fun ControlNet Union 2.1 (newer ComfyUI's ZImage_Control, a model
                     # patch), token-sparse with the model; cfg 1 as Z-Image Turbo samples
      [ -f .dev-newest/comfyui.tgz ] || { echo "newestzimagefun needs .dev-newest in carry"; continue; }
      newest timeout 420 python3 bench/speed.py --models z-image z-image-fun-cn --res 1024 --cfg 1 --ratios 0.25 0.125 \
        --json "$out/${part}_$day.json" 2>&1 | tee "$out/$part.log" ;;
    *) echo "unknown part '$part'"; exit 2 ;;
  esac
done

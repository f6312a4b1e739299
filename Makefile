# Every target runs inside .venv, which `make setup` creates and fills.
# GPU machines: install your CUDA torch + torchvision into .venv first and run
#   make setup TORCH=
# so that the CPU/local pin below is skipped.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.setup-done
# torch 2.14.1 + torchvision 0.29.1 install together from this machine's local wheels and import on a CPU
# (torch 2.13.0's only torchvision, 0.28.0, fails to import: "operator torchvision::nms does not exist").
TORCH ?= torch==2.14.1 torchvision==0.29.1
APT_PACKAGES := libosmesa6
PIP := set -o pipefail; $(PY) -m pip install -q
# pip warns about every package missing from this machine's extra local indexes; keep real messages.
QUIET := 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }
CACHES := caches

# `make cache DATASET=...`: the object cache builder (`preprocess objects --help`) for shapenet, modelnet40,
# meshes and demo; the scene cache builder (`preprocess scenes --help`) for nuscenes, semantickitti, demo-scenes;
# the points cache builder (`preprocess points --help`) for scanobjectnn (VARIANT=obj_bg|obj_only|pb_t50_rs),
# modelnet40-resampled, shapenet55 and demo-scan (built in, VARIANT as ScanObjectNN's); the rooms cache builder
# (`preprocess rooms --help`) for s3dis (S3DIS_ROOT = the Stanford3dDataset_v1.2_Aligned_Version folder), scannet
# (SCANNET_ROOT = the folder holding scannet_train_detection_data and meta_data, votenet's scannet/) and
# demo-rooms (built in).
DATASET ?= demo
OUT ?= $(CACHES)/$(DATASET)$(if $(filter scanobjectnn demo-scan,$(DATASET)),-$(VARIANT)).zarr
SCENE_DATASETS := nuscenes semantickitti demo-scenes
POINT_DATASETS := scanobjectnn modelnet40-resampled shapenet55 shapenetpart demo-scan
ROOM_DATASETS := s3dis scannet demo-rooms
VARIANT ?= obj_bg
ROOT_shapenet = $(SHAPENET_ROOT)
ROOT_modelnet40 = $(MODELNET_ROOT)
ROOT_meshes = $(MESH_ROOT)
ROOT_nuscenes = $(NUSCENES_ROOT)
ROOT_semantickitti = $(KITTI_ROOT)
ROOT_scanobjectnn = $(SCANOBJECTNN_ROOT)
ROOT_modelnet40-resampled = $(MODELNET_RESAMPLED_ROOT)
ROOT_shapenet55 = $(SHAPENET55_ROOT)
ROOT_shapenetpart = $(SHAPENETPART_ROOT)
ROOT_s3dis = $(S3DIS_ROOT)
ROOT_scannet = $(SCANNET_ROOT)
ROOT ?= $(ROOT_$(DATASET))
VERSION ?= v1.0-mini
TEACHERS_demo = tiny
TEACHERS_demo-scenes = dinov2-tiny
TEACHERS_nuscenes = dinov2-vitb14
TEACHERS_semantickitti = dinov2-vitb14
TEACHERS ?= $(or $(TEACHERS_$(DATASET)),base)
WORKERS ?= 2
# Test processes (pytest-xdist): many tests wait on subprocesses (torchrun ranks, Dask workers, an S3 server).
TEST_WORKERS ?= 2
CACHE_ARGS ?=
# The demo cache is lighter than the defaults (6 views of 128 px instead of 12 of 224) to stay within minutes on a CPU.
DEMO_ARGS := --views 6 --resolution 128

.PHONY: setup test test-slow demo tour cache reproduce bench-chunks bench-build bench-scenes bench-validate bench-rooms bench-detect bench-occlusion bench-encoders bench-stage2 ablate-stage2 bench-train clean

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@missing=""; for p in $(APT_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing system packages:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing >/dev/null; \
	fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ -n "$(TORCH)" ]; then echo "installing $(TORCH)"; $(PIP) $(TORCH) $(QUIET); fi
	@echo "installing teacher-cache[all,test] (editable)"
	@$(PIP) -e ".[all,test]" $(QUIET)
	@touch $(STAMP)

test: setup
	$(VENV)/bin/pytest -q -n $(TEST_WORKERS) -m "not slow" --durations=15

test-slow: setup
	$(VENV)/bin/pytest -q -m slow

cache: setup
ifneq ($(filter $(DATASET),$(POINT_DATASETS)),)
	$(VENV)/bin/preprocess points $(DATASET) $(if $(ROOT),--root "$(ROOT)") --out "$(OUT)" \
	  $(if $(filter scanobjectnn demo-scan,$(DATASET)),--variant $(VARIANT)) $(CACHE_ARGS)
else ifneq ($(filter $(DATASET),$(SCENE_DATASETS)),)
	$(VENV)/bin/preprocess scenes $(DATASET) $(if $(ROOT),--root "$(ROOT)") --out "$(OUT)" \
	  --teachers $(TEACHERS) --workers $(WORKERS) $(if $(filter nuscenes,$(DATASET)),--version $(VERSION)) \
	  $(if $(filter demo-scenes,$(DATASET)),--images) $(CACHE_ARGS)
else ifneq ($(filter $(DATASET),$(ROOM_DATASETS)),)
	$(VENV)/bin/preprocess rooms $(DATASET) $(if $(ROOT),--root "$(ROOT)") --out "$(OUT)" --workers $(WORKERS) \
	  $(CACHE_ARGS)
else
	$(VENV)/bin/preprocess objects $(DATASET) $(if $(ROOT),--root "$(ROOT)") --out "$(OUT)" \
	  --teachers $(TEACHERS) --workers $(WORKERS) $(if $(filter demo,$(DATASET)),$(DEMO_ARGS)) $(CACHE_ARGS)
endif

# The main job on built-in data: build the demo object cache with the tiny teachers (resumes / says complete when
# run again), check it, train stage-1 and stage-2 on the CPU, draw them and print their evaluation next to a
# random-init encoder; then build the demo rooms, fine-tune indoor semantic segmentation and 3D detection from
# stage-2 and from random init, and print their scores on the held-out rooms. `make tour` runs every other capability's demo after it.
RUNS := runs
DEMO_STAGE1_STEPS ?= 150
DEMO_STAGE2_STEPS ?= 100
# a CPU-sized fusion run: a narrower backbone, 8192 points per frame
DEMO_FUSION_ARGS ?= --steps 150 --dim 32 --depth 4 --max-points 8192
# CPU-sized fine-tuning on demo-scan: the ScanObjectNN recipe, 10 epochs at 1,024 points and 32 groups (the tiny preset)
DEMO_FINETUNE_ARGS ?= --epochs 10 --warmup-epochs 1 --num-points 1024 --num-group 32 --workers 0 --no-progress
# CPU-sized part segmentation on the demo's part labels: Point-MAE's recipe, 8 epochs at 512 points
DEMO_SEGMENT_ARGS ?= --epochs 8 --warmup-epochs 1 --num-points 512 --workers 0 --no-progress
# CPU-sized indoor semantic segmentation on the demo rooms: ACT's recipe, 6 short epochs (a quarter of the blocks)
# of 512-point blocks in 32 patches
DEMO_SEMSEG_ARGS ?= --epochs 6 --warmup-epochs 1 --num-points 512 --num-group 32 --group-size 32 --batch-size 16 \
  --sample-rate 0.25 --workers 0 --no-progress
# CPU-sized 3D detection on the demo rooms: 3DETR's decoder at 4 layers, 64 queries over 128 patches of 1,024 points,
# 40 epochs without augmentation at a higher learning rate (3DETR's recipe needs hundreds of epochs to leave 0 AP)
DEMO_DETECT_ARGS ?= --epochs 40 --warmup-epochs 2 --num-points 1024 --num-group 128 --group-size 16 --num-queries 64 \
  --dec-layers 4 --batch-size 4 --lr 2e-3 --grad-clip 1.0 --no-augment --val-every-epochs 40 --workers 0 --no-progress
# a run folder that has a last.pt is resumed (a finished run then stops at once); rm -r it to train again
resume_if = $$( [ -f $(1)/last.pt ] && echo --resume )
demo: setup
	@mkdir -p $(CACHES) $(RUNS)
	$(MAKE) --no-print-directory cache DATASET=demo
	$(VENV)/bin/cache info $(CACHES)/demo.zarr
	$(VENV)/bin/cache validate $(CACHES)/demo.zarr
	$(VENV)/bin/train stage1 --cache $(CACHES)/demo.zarr --out $(RUNS)/demo-s1 --steps $(DEMO_STAGE1_STEPS) \
	  $(call resume_if,$(RUNS)/demo-s1)
	$(VENV)/bin/train stage2 --cache $(CACHES)/demo.zarr --teacher $(RUNS)/demo-s1/last.pt \
	  --out $(RUNS)/demo-s2 --steps $(DEMO_STAGE2_STEPS) $(call resume_if,$(RUNS)/demo-s2)
	$(VENV)/bin/cache show $(CACHES)/demo.zarr --out $(RUNS)/demo-sheet.png
	$(VENV)/bin/train report $(RUNS)/demo-s1
	$(VENV)/bin/train report $(RUNS)/demo-s2
	$(PY) scripts/demo_results.py $(RUNS)/demo-s1 $(RUNS)/demo-s2
	$(MAKE) --no-print-directory cache DATASET=demo-rooms
	$(VENV)/bin/cache show $(CACHES)/demo-rooms.zarr --out $(RUNS)/demo-rooms-sheet.png
	$(VENV)/bin/train semseg --cache $(CACHES)/demo-rooms.zarr --init $(RUNS)/demo-s2/last.pt \
	  --out $(RUNS)/demo-semseg-s2 $(DEMO_SEMSEG_ARGS) $(call resume_if,$(RUNS)/demo-semseg-s2)
	$(VENV)/bin/train semseg --cache $(CACHES)/demo-rooms.zarr --init random \
	  --out $(RUNS)/demo-semseg-random $(DEMO_SEMSEG_ARGS) $(call resume_if,$(RUNS)/demo-semseg-random)
	$(PY) scripts/demo_semseg_results.py $(CACHES)/demo-rooms.zarr $(RUNS)/demo-semseg-s2 $(RUNS)/demo-semseg-random
	$(VENV)/bin/train detect --cache $(CACHES)/demo-rooms.zarr --init $(RUNS)/demo-s2/last.pt \
	  --out $(RUNS)/demo-detect-s2 $(DEMO_DETECT_ARGS) $(call resume_if,$(RUNS)/demo-detect-s2)
	$(VENV)/bin/train detect --cache $(CACHES)/demo-rooms.zarr --init random \
	  --out $(RUNS)/demo-detect-random $(DEMO_DETECT_ARGS) $(call resume_if,$(RUNS)/demo-detect-random)
	$(PY) scripts/demo_detect_results.py $(CACHES)/demo-rooms.zarr $(RUNS)/demo-detect-s2 $(RUNS)/demo-detect-random
	@echo "pictures: $(RUNS)/demo-sheet.png, $(RUNS)/demo-rooms-sheet.png, $(RUNS)/demo-s1/report.html, \
	$(RUNS)/demo-s2/report.html"

# Every other capability on built-in data, after the main job: LiDAR scenes and fusion distillation, fine-tuning
# on scanned shapes, part segmentation; each next to random init, every table printed at the end.
tour: demo
	$(MAKE) --no-print-directory cache DATASET=demo-scenes
	$(VENV)/bin/cache show $(CACHES)/demo-scenes.zarr --out $(RUNS)/demo-scenes-sheet.png --color-by label
	$(VENV)/bin/train fusion pretrain --cache $(CACHES)/demo-scenes.zarr --out $(RUNS)/demo-fusion-pre \
	  $(DEMO_FUSION_ARGS) $(call resume_if,$(RUNS)/demo-fusion-pre)
	$(VENV)/bin/train fusion finetune --cache $(CACHES)/demo-scenes.zarr --out $(RUNS)/demo-fusion-1pc-pretrained \
	  --labels 1% --init $(RUNS)/demo-fusion-pre/last.pt $(DEMO_FUSION_ARGS) \
	  $(call resume_if,$(RUNS)/demo-fusion-1pc-pretrained)
	$(VENV)/bin/train fusion finetune --cache $(CACHES)/demo-scenes.zarr --out $(RUNS)/demo-fusion-1pc-random \
	  --labels 1% --init random $(DEMO_FUSION_ARGS) $(call resume_if,$(RUNS)/demo-fusion-1pc-random)
	$(VENV)/bin/train report $(RUNS)/demo-fusion-1pc-pretrained
	$(MAKE) --no-print-directory cache DATASET=demo-scan VARIANT=obj_bg
	$(VENV)/bin/train finetune --cache $(CACHES)/demo-scan-obj_bg.zarr --init $(RUNS)/demo-s1/last.pt \
	  --out $(RUNS)/demo-scan-ft-s1 $(DEMO_FINETUNE_ARGS) $(call resume_if,$(RUNS)/demo-scan-ft-s1)
	$(VENV)/bin/train finetune --cache $(CACHES)/demo-scan-obj_bg.zarr --init random \
	  --out $(RUNS)/demo-scan-ft-random $(DEMO_FINETUNE_ARGS) $(call resume_if,$(RUNS)/demo-scan-ft-random)
	$(VENV)/bin/train segment --cache $(CACHES)/demo.zarr --init $(RUNS)/demo-s2/last.pt \
	  --out $(RUNS)/demo-seg-s2 $(DEMO_SEGMENT_ARGS) $(call resume_if,$(RUNS)/demo-seg-s2)
	$(VENV)/bin/train segment --cache $(CACHES)/demo.zarr --init random \
	  --out $(RUNS)/demo-seg-random $(DEMO_SEGMENT_ARGS) $(call resume_if,$(RUNS)/demo-seg-random)
	$(VENV)/bin/train report $(RUNS)/demo-seg-s2
	$(PY) scripts/demo_results.py $(RUNS)/demo-s1 $(RUNS)/demo-s2
	$(PY) scripts/demo_seg_results.py $(CACHES)/demo-scenes.zarr $(RUNS)/demo-fusion-1pc-pretrained $(RUNS)/demo-fusion-1pc-random
	$(PY) scripts/demo_finetune_results.py $(RUNS)/demo-scan-ft-s1 $(RUNS)/demo-scan-ft-random
	$(PY) scripts/demo_finetune_results.py $(RUNS)/demo-seg-s2 $(RUNS)/demo-seg-random
	@echo "pictures: $(RUNS)/demo-sheet.png, $(RUNS)/demo-scenes-sheet.png, $(RUNS)/demo-s1/report.html, \
	$(RUNS)/demo-s2/report.html, $(RUNS)/demo-fusion-1pc-pretrained/report.html, $(RUNS)/demo-seg-s2/report.html \
	(parts.png)"

# A table of the paper, every row for every seed, printed as mean +- std beside the paper's figures
# (scripts/reproduce.py, configs/paper/): `make reproduce TABLE=table4 DEMO=1` on a CPU with the built-in demo caches.
TABLE ?= table4
SEEDS ?= 0,1,2
reproduce: setup
	$(PY) scripts/reproduce.py $(TABLE) --seeds $(SEEDS) $(if $(DEMO),--demo) $(if $(REPRO_OUT),--out $(REPRO_OUT))

bench-chunks: setup
	$(PY) scripts/bench_chunks.py

bench-build: setup
	$(PY) scripts/bench_build.py

bench-scenes: setup
	$(PY) scripts/bench_scenes.py

# a generated 20-million-pair scene cache (~3 GB in /tmp, deleted afterwards): validate memory and speed
bench-validate: setup
	$(PY) scripts/bench_validate.py

# demo rooms of a million points: build and training-block rates, whole-room evaluation, peak RSS of each
bench-rooms: setup
	$(PY) scripts/bench_rooms.py

# 3DETR at ScanNet scale (40,000 points a room): training steps/s, evaluation rooms/s, matching's share of a step
bench-detect: setup
	$(PY) scripts/bench_detect.py

bench-occlusion: setup
	$(PY) scripts/bench_occlusion.py

# every encoder family's training step at its official size; add the official code side by side with
# BENCH_ENCODERS_ARGS="--reference-point-mae DIR --reference-point-m2ae DIR" (clones; see the script's docstring)
BENCH_ENCODERS_ARGS ?=
bench-encoders: setup
	$(PY) scripts/bench_encoders.py $(BENCH_ENCODERS_ARGS)

bench-stage2: setup
	@test -f $(RUNS)/demo-s1/last.pt || $(MAKE) --no-print-directory demo
	$(PY) scripts/bench_stage2.py $(CACHES)/demo.zarr $(RUNS)/demo-s1/last.pt

ablate-stage2: setup
	@test -f $(RUNS)/demo-s1/last.pt || $(MAKE) --no-print-directory demo
	$(PY) scripts/ablate_stage2.py $(CACHES)/demo.zarr $(RUNS)/demo-s1/last.pt

bench-train: setup
	@test -d $(CACHES)/demo.zarr || $(MAKE) --no-print-directory cache DATASET=demo
	@test -d $(CACHES)/demo-scenes.zarr || $(MAKE) --no-print-directory cache DATASET=demo-scenes
	$(PY) scripts/bench_loader.py $(CACHES)/demo.zarr --scenes $(CACHES)/demo-scenes.zarr --epochs 20
	$(PY) scripts/bench_stage1.py $(CACHES)/demo.zarr

clean:
	rm -rf $(VENV) $(CACHES) runs .pytest_cache

# Two commands do all set-up on a fresh machine:
#   make demo   creates .venv, installs requirements, builds the sample data, trains Phase 1 briefly on it
#   make test   creates .venv, installs requirements, runs the CPU test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test venv sample-data clean-demo

venv: $(STAMP)

$(STAMP): requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -r requirements.txt
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

sample-data: $(STAMP)
	$(PY) tools/make_sample_data.py

# A short Phase-1 run on the sample data (CPU-friendly: a few minutes on 2 cores), then the validation
# PSNR against the frame-average baseline. Re-running continues nothing: the demo experiment starts fresh.
demo: sample-data
	rm -f ckpt/demo_phase1_last.pt ckpt/demo_phase1_best.pt
	$(PY) train.py --phase 1 --data_path data/sample_vimeo --exp_name demo_phase1 \
		--batch_size 4 --crop_size 128 --epochs 4 --steps_per_epoch 15 --eval_interval 2 \
		--warmup_steps 10 --lr 5e-4 --num_workers 2 --log_every 5
	$(PY) benchmark/Vimeo90K.py --model demo_phase1_best --path data/sample_vimeo --device cpu

clean-demo:
	rm -rf ckpt/demo_phase1_* log/demo_phase1

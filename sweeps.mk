# Sweeps, included by the Makefile: `make -j2 sweep-lr`, `make -j2 sweep-gradscan`.
#
# Each grid is declared once, below; every combination of its values is one point: one rnnexp
# process writing one run folder named after its values. A point is done when that folder's
# summary file exists, and the folder exists only once its run has finished (rnnexp works in
# <folder>.partial and renames it at the end), so after an interruption `make` runs the missing
# points only, and a finished point is never run again or overwritten.
# Any grid can be changed on the command line: make -j2 sweep-lr LR_SWEEP_SEEDS="0 1".

SWEEP_DIR ?= runs/sweeps
# More overrides for every training point, e.g. SWEEP_ARGS="train.num_batches=200" for a quick look
# (with its own SWEEP_DIR: points already there are kept as they are).
SWEEP_ARGS ?=
# A swept key given again in SWEEP_ARGS would win over the point's own value and mislabel its folder.
ifneq ($(filter train.lr=% seed=%,$(SWEEP_ARGS)),)
$(error SWEEP_ARGS = "$(SWEEP_ARGS)": train.lr and seed are swept (LR_SWEEP_LRS, LR_SWEEP_SEEDS); set them there)
endif

# Learning rate x model on the running-mean task: the notebook's four models (configs/MODEL.yaml).
LR_SWEEP_MODELS ?= rnn_1_layer lstm_1_layer rnn_2_layer lstm_2_layer
LR_SWEEP_LRS ?= 1e-4 3e-4 1e-3 3e-3 1e-2
LR_SWEEP_SEEDS ?= 0 1 2

# Gradient scans (rnnexp gradscan) over nonlinearities; several seeds, as one random draw proves nothing.
GRADSCAN_NONLINEARITIES ?= tanh relu identity
GRADSCAN_SEEDS ?= 0 1 2 3 4
GRADSCAN_WEIGHT_SCALES ?= -5:5:0.25
GRADSCAN_BIAS_SCALES ?= 1
GRADSCAN_ARGS ?=

# --- rules: nothing to change below -------------------------------------------------------------

LR_POINTS :=
GRADSCAN_POINTS :=

# One point of sweep-lr: $(1) model config, $(2) learning rate, $(3) seed. A diverged run is a
# result (it diverges again on every retry), so its error is ignored once its folder is in place.
define lr_point
LR_POINTS += $(SWEEP_DIR)/lr/$(1)_lr$(2)_seed$(3)/summary.json
$(SWEEP_DIR)/lr/$(1)_lr$(2)_seed$(3)/summary.json: | $(STAMP)
	@echo "train $$(@D)"
	-@exec $(RNNEXP) train --quiet --run-dir $$(@D) --config configs/$(1).yaml train.lr=$(2) seed=$(3) $(SWEEP_ARGS) >/dev/null
	@test -f $$@ || { echo "$$(@D): did not finish (see above)" >&2; exit 1; }
endef

# One point of sweep-gradscan: $(1) nonlinearity, $(2) seed. gradscan makes a new folder under
# --runs-dir; it is made in <point>.partial and moved to <point> once the scan has succeeded.
define gradscan_point
GRADSCAN_POINTS += $(SWEEP_DIR)/gradscan/$(1)_seed$(2)/meta.json
$(SWEEP_DIR)/gradscan/$(1)_seed$(2)/meta.json: | $(STAMP)
	@echo "gradscan $$(@D)"
	@test ! -e $$(@D) || { echo "$$(@D): exists without $$(@F): delete it to scan this point again" >&2; exit 1; }
	@rm -rf $$(@D).partial
	@exec $(RNNEXP) gradscan --nonlinearity $(1) --seed $(2) --weight-scale=$(GRADSCAN_WEIGHT_SCALES) \
	  --bias-scale=$(GRADSCAN_BIAS_SCALES) $(GRADSCAN_ARGS) --runs-dir $$(@D).partial >/dev/null
	@mv $$(@D).partial/* $$(@D) && rmdir $$(@D).partial
endef

$(foreach m,$(LR_SWEEP_MODELS),$(foreach lr,$(LR_SWEEP_LRS),$(foreach s,$(LR_SWEEP_SEEDS),\
  $(eval $(call lr_point,$(m),$(lr),$(s))))))
$(foreach n,$(GRADSCAN_NONLINEARITIES),$(foreach s,$(GRADSCAN_SEEDS),\
  $(eval $(call gradscan_point,$(n),$(s)))))

# make -j runs one process per core; tiny matmuls are slower with more than one torch thread each.
$(LR_POINTS) $(GRADSCAN_POINTS): export OMP_NUM_THREADS := 1
# A point's summary is written by rnnexp, complete or not at all: make must never delete one.
.PRECIOUS: $(LR_POINTS) $(GRADSCAN_POINTS)
.PHONY: sweep-lr sweep-gradscan

sweep-lr: $(LR_POINTS)
	$(RNNEXP) runs $(SWEEP_DIR)/lr --plot $(SWEEP_DIR)/lr/eval_mse.png --x train.lr

sweep-gradscan: $(GRADSCAN_POINTS)
	$(RNNEXP) runs $(SWEEP_DIR)/gradscan

"""Default settings of plan sections that trainers read, in one place below both the
planner (which copies them into plans.json, so a user sees and edits every knob there) and
the trainers (which fall back to them for plans written before a section existed)."""

from __future__ import annotations

import copy

# numbers the training loop and the SAM stage used to hard-code; the planner writes them into
# plans.json and plans written before they were there fall back to these same values
GRAD_CLIP = 12.0  # max gradient norm of a stage-1 optimiser step (nnU-Net's value)
NUM_VAL_ITERATIONS = 20  # validation batches per epoch of a plan section without the key
ENCODER_BATCH_SIZE = 4  # slices per frozen image encoder call (cache building, prediction)
STAGE1_LOSS = "dice_ce"

# stage 1 on the cached SAM image embedding (EmbeddingHeadTrainer)
EMBEDDING_HEAD = {
    "num_epochs": 30,
    "num_iterations_per_epoch": 50,
    "num_val_iterations_per_epoch": 5,
    "batch_size": 8,
    "grad_clip": GRAD_CLIP,
    "initial_lr": 2e-3,
    "weight_decay": 1e-4,
    "width": 64,
    "dropout": 0.1,
    # dilated residual context blocks after the body ([] = none; plans written before them: none)
    "context_dilations": [2, 4],
    # test-time flipping: the head also reads the embedding of the horizontally mirrored slice (one more
    # encoder pass per slice, cached for the fold's cases) and averages; polyp_dev, unseen centre, 2 seeds:
    # head alone 0.728 -> 0.759, chain with LiteMedSAM's decoder 0.742 -> 0.755
    "test_time_flip": True,
    # appearance views per training slice, encoded once and cached beside the plain embeddings.
    # The planner sets it by the SAM input (appearance_views_for): 2 for one grey channel, 0 for colour
    # (on polyp_dev, train Kvasir-SEG, test CVC-ClinicDB, 2 views lowered the head's Dice on the unseen
    # centre from 0.728 to 0.688). Each costs an encoder pass per training slice, capped by the time
    # budget (samunet/training/view_budget.py). Plans without the key: 0.
    "num_views": 0,
    # scale views per training slice (zoomed by a factor log-uniform in scale_range before the encoder,
    # targets zoomed alike; samunet/sam/scale_views.py). Off by default: on polyp_dev (ClinicDB's polyps
    # are smaller than Kvasir-SEG's) 2 views gave the head 0.738 vs 0.742 and the chain 0.689 vs 0.758
    # (2 seeds, 200 iterations): the head's masks shrank and its boxes cut polyps
    "num_scale_views": 0,
    "scale_range": [0.6, 1.4],
    "view_seed": 0,
    "foreground_oversampling": 0.5,
}

# SAMBoxTrainer's stage-1 choice and decoder adaptation (merged into the plan's "sam" section)
SAM_CHAIN = {
    "stage1_trainer": "EmbeddingHeadTrainer",
    # out-of-fold stage-1 boxes for decoder training: k heads inside the training cases (0 = in-sample)
    "oof_folds": 3,
    "train_box_source": "stage1",
    # share of training prompts that are (jittered) reference boxes instead of stage-1 boxes
    "gt_box_fraction": 0.5,
    # L2-SP: weight of sum((w - w_pretrained)^2) in the decoder loss (keeps what SAM knew)
    "l2sp_weight": 0.1,
    # the adapted decoder = a * trained + (1 - a) * pretrained weights (WiSE-FT; 1 = as trained). polyp_dev,
    # ClinicDB, one chain: a = 1 / 0.5 / 0 (original): reference box 0.925 / 0.935 / 0.937, automatic
    # boxes 0.767 / 0.764 / 0.756
    "decoder_interpolation": 0.5,
    # prompts per forward/backward pass of a decoder training step (0 = the whole batch): the step's
    # gradient is accumulated over micro-batches, so the update is the batch's. LiteMedSAM, batch 8,
    # 2 CPU cores: peak memory 2.7 -> 1.7 GiB at the same 1.3 s per step with micro-batches of 4
    "micro_batch_size": 4,
    # pick, on source validation, original vs adapted decoder and stage 1 vs SAM per label
    "validation_choice": True,
    # stage-1 probabilities at validation/prediction: the mean of the fold's head and its out-of-fold
    # heads (already trained for the decoder's boxes; polyp_dev ClinicDB 0.729 -> 0.739, source val
    # 0.814 -> 0.822 with 3 out-of-fold heads, SAM's low-res frame)
    "stage1_ensemble": True,
    # under a time budget: share of the time left after encoding that goes to stage 1 (the fold's model
    # and its out-of-fold models); the decoder gets the rest
    "stage1_time_share": 0.5,
    # decoder training samples also draw the appearance views of the training slices stage 1 trained on
    # (grey inputs; no extra encoding): prostate, 12 real slices of 5 unseen sites, reference box
    # 0.794 -> 0.806 at the default interpolation (see documentation/sam_stage.md)
    "decoder_views": True,
}

# multi-part labels: one box per sizeable connected component, and the fallback threshold (merged into
# "prompting")
MULTI_BOX = {
    "boxes_per_label": 4,
    "component_min_fraction": 0.2,
    "component_min_pixels": 16,
    # a label whose stage-1 probability nowhere exceeds theta1 gets the boxes of its components above
    # this (stage 1's own mask threshold) rather than none: a stage 1 trained on one site is unsure on
    # another. Real prostate slices of 5 unseen sites: chain 0.26 -> 0.34 Dice (source validation
    # 0.74 -> 0.77); polyp_dev ClinicDB 0.758 -> 0.760 (2 seeds each). Plans without it: no fallback
    "theta1_fallback": 0.5,
    # more box sets per label: its components at each of these theta1 besides the default ones, all decoded,
    # and SAM's own IoU prediction (mean over a set's boxes) picks the set. polyp_dev, the whole default
    # chain: ClinicDB (unseen centre) 0.766 -> 0.789, source validation 0.859 -> 0.855, chain 23 -> 25 min.
    # Plans without it (or []): the default boxes only
    "candidate_thresholds": [0.5, 0.75, 0.9],
    # automatic boxes (every candidate set) scaled by this about their centres at validation and prediction:
    # stage 1's extents run inside the object's, and the decoder learnt from jittered (grown) boxes.
    # Trained chains, test / source validation, 1.0 -> 1.1: polyp_dev ClinicDB 0.786 -> 0.799 / 0.849 ->
    # 0.866; 3D prostate, RUNMC-trained, three chains 0.658 -> 0.703, 0.729 -> 0.792, 0.615 -> 0.639;
    # 12 real prostate slices of unseen sites 0.364 -> 0.309 (documentation/sam_stage.md). Plans without it: 1
    "box_scale": 1.1,
    # a label in every training case (a polyp per frame, lungs per chest X-ray, the prostate per MRI
    # volume): a case where stage 1 finds it on no slice at neither threshold gets boxes around its most
    # probable region (the component above presence_relative x its peak, across slices in a volume)
    # instead of none. polyp_dev ClinicDB (unseen centre), the chain's heads and LiteMedSAM's decoder:
    # 0.765 -> 0.777 (2 of 128 frames had no box). Plans without it: off; a training case without the
    # label: off for that label
    "presence_prior": True,
    "presence_relative": 0.5,
    # labels nested in others (the optic cup in the disc rim, a tumour in its organ, the central gland
    # in the peripheral zone's box): SAM fills the outer label's box, so where SAM's masks overlap the
    # deepest label wins instead of the most probable. Reference boxes, LiteMedSAM's decoder: fundus
    # cup 0.21 -> 0.79 Dice, rim 0.57 -> 0.68; prostate zones PZ 0.665 -> 0.703, CG 0.844 -> 0.895.
    # Nested: >= nesting_fraction of a label's pixels inside the other's box (training labels).
    # Plans without it: off
    "nesting_precedence": True,
    "nesting_fraction": 0.5,
}


# ProMISeTrainer (the paper's settings, METHODS.md 2; plan section "promise")
PROMISE = {
    "points": 16,
    "mask_token": 0,
    "legacy_double_sigmoid": False,
    "lr": 1e-5,
    "apm_depth": 18,
    "apm_width": 256,
    "fg_slice_fraction": 0.67,
    "cache_features": True,
}

# ClassPromptTrainer / AutoMedSAM (the paper's settings, METHODS.md 3; plan section "class_prompt")
CLASS_PROMPT = {
    "steps": 100,
    "width": 1.0,
    "attention_activation": "none",
    "final_relu": False,
    "noise_sampling": "closed_form",
    "train_noise": True,
    "eval_noise": "zero",
    "eval_noise_seed": None,
    "box_jitter_px": 5,
    "unnormalised": False,
    "initial_lr": 5e-4,
    "weight_decay": 0.01,
    "plateau_factor": 0.9,
    "plateau_patience": 5,
    "grad_clip": 12.0,
    "min_object_pixels": 1,
    # share of samples prompting a class absent from the slice, with an empty target (issue 15.3):
    # inference prompts every class on every slice. Plans written before the key: 0 (the trainer's fallback)
    "absent_class_fraction": 0.25,
}

# appearance views by what SAM's encoder is fed (the planner's choice; plans keep what they were written with)
GREY_NUM_VIEWS = 2


def appearance_views_for(sam_input_mode: str) -> tuple[int, str]:
    """``(embedding_head.num_views, reason)`` for a dataset whose SAM input is ``sam_input_mode``.

    One grey channel (MR, CT, X-ray, ultrasound; ``"replicate"``): 2 views. Prostate MRI, train 5
    RUNMC volumes, test a held-out volume under the scanner changes of issue 14 (2 seeds): head
    alone plain 0.831 -> 0.825, dark gamma with Rician noise 0.49 -> 0.61, partial contrast reversal
    0.67 -> 0.78, low resolution 0.23 -> 0.76, strong bias field 0.02 -> 0.71; real slices of 5 other
    sites 0.29 -> 0.36. Colour (``"rgb"``, endoscopy, fundus, photographs): none; on polyp_dev views
    lowered the unseen centre (head 0.728 -> 0.688; camera-like colour views: chain 0.760 -> 0.740).
    """
    if sam_input_mode == "replicate":
        return GREY_NUM_VIEWS, (f"one grey channel into SAM: {GREY_NUM_VIEWS} appearance views of each training "
                                "slice for stage 1 (scanner changes of contrast, noise, blur and bias field), "
                                "encoded once, capped at a share of the time budget")
    return 0, "colour input into SAM: no appearance views (they lowered the unseen centre on colour endoscopy)"


SECTIONS = {"embedding_head": EMBEDDING_HEAD}


def section_defaults(section: str) -> dict | None:
    """A deep copy of a whole section's defaults, or None when the section has none here."""
    return copy.deepcopy(SECTIONS[section]) if section in SECTIONS else None


def fill_plan_defaults(plans: dict) -> dict:
    """Add sections and keys a plan written by an older samunet lacks (in place; returns it).
    Keys the plan has are never changed."""
    for name, defaults in SECTIONS.items():
        plans.setdefault(name, copy.deepcopy(defaults))
    return plans

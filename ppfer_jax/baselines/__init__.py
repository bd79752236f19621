"""The paper's Table 1 baselines, one file each: Gaussian blur, the trade-off framework, optical flow, image
swapping. Each makes anonymised clips (``anonymised_clips(ctx, split, method)``) and, where it trains, its
stages."""

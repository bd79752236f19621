"""One file per kind of stage: pretraining, Algorithm 1 (privacy, and its robust variant), Algorithm 2
(compensation), the utility model, the classifiers the others build on, and the ablations' joint training."""

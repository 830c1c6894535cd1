"""Training on several processes: data parallelism (`ddp`: process groups, collectives, sharding, the
BatchNorm policy, lr scaling for large batches) and pipeline model parallelism (`pipeline`)."""

"""Ray gangs (launch/ray_run.py): gangs of ranks pulling manifest rows from one queue.

    queue.py      RowQueue: lease / ack / requeue, attempts per row, final outcomes (the dispenser actor's state)
    lease.py      LeaseSource: the gang's work source (rank 0 leases, the gang shares the row)
    rank.py       Rank: one rank actor (its own process group with the other ranks of its gang, worker.run)
    placement.py  what a gang needs and whether the cluster can hold it (clear errors instead of a pending hang)
    gang.py       Gang: one placement group + its rank actors; start, stop, kill
    rows.py       the queue rebuilt from the ledger; a dead gang's claims and temp files released
    job.py        Job: place, watch, rebuild dead gangs, log, exit code
    driver.py     main: resolve the gang, validate (exit 2 before Ray starts), connect, run the Job
"""

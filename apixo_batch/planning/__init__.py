"""What a campaign will cost and take, before and during a run: the kind of a task, the
start order, the forecast and the plan's figures. No I/O."""

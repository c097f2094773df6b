"""One module per provider family; each defines `async def pull(ctx, source) -> PullResult`."""

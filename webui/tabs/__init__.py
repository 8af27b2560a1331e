"""One module per workspace; each has build(ctx) that lays out and wires its components."""

"""HTTP routers: thin layers that parse, authorise, hand over to the runtime and convert the result."""

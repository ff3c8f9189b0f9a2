"""Events out: the webhook endpoints' addresses, and the delivery of the events outbox to them."""

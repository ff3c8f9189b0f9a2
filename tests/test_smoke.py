"""A first end-to-end path: deposit, then read the balance, on every transport."""


async def test_deposit_then_balance(any_api):
    r = await any_api.call("deposit", {"user": "hanzo/alice", "amount": 1000})
    assert r.status in (200, 201) and r.result["amount"] == 1000 and r.result["type"] == "deposit"
    r = await any_api.call("getBalance", {"user": "hanzo/alice"})
    assert r.result == {"user": "hanzo/alice", "currency": "usd", "balance": 1000, "holds": 0, "available": 1000}

"""Use cases of the exchange: keyword-only functions over a session, a blob store and a log signer.

Nothing here reads Settings or touches HTTP. Every state change appends its ledger entry in the
same transaction as the change (`exchange.storage.ledger_store.append`), so a change without its
entry never commits.
"""

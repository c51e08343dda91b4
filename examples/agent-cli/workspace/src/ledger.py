"""The ledger: every movement of money, in integer cents."""


def balance(entries: list[int]) -> int:
    """The sum of the entries, in cents."""
    return sum(entries)


def refund(entries: list[int], cents: int) -> list[int]:
    """The entries with a refund appended."""
    # TODO: refuse a refund larger than the balance
    return [*entries, -cents]

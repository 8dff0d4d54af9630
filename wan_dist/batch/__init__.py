"""Batch machinery: manifest -> items -> (data-parallel share) -> skip finished -> run -> outputs + ledger."""

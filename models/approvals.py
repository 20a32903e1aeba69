"""Segregation of duties for quote approvals: one person fills at most one required approval."""


def assignable(candidates: list[list[str]], taken: frozenset[str] = frozenset()) -> bool:
    """Whether each required approval (its eligible people, in `candidates`) can get a different
    person, none of them in `taken`: a matching in the bipartite graph of approvals and people."""
    owner: dict[str, int] = {}  # person -> the approval they fill

    def place(approval: int, seen: set[str]) -> bool:
        for person in candidates[approval]:
            if person in taken or person in seen:
                continue
            seen.add(person)
            if person not in owner or place(owner[person], seen):
                owner[person] = approval
                return True
        return False

    return all(place(n, set()) for n in range(len(candidates)))

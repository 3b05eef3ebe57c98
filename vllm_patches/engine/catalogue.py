"""The slot catalogue of a worker: which feature or vector each op's slots hold, and the rows put there.

Every op has three kinds of slots (``op.py``): "rows" (the encoder / decoder rows of an edited feature,
of a ``vector`` spec, or of a ``when`` gate feature), "rec" (an edit a ``reconstruct`` layer applies to
its SAE's own features) and "read" (a feature read out). Each step hands out slots afresh in the order
the requests ask (``slot``), with the same identities the scheduler admits by (``admission.slot_ident``);
a slot's buffers are rewritten only when it held something else the step before, and the rows a
feature needs are computed once and kept while recently used (``_cached_rows``).

Owned here: the ops and SAEs by configured key (installed by ``runtime``), what each slot holds now, and
the cached rows. The step and read planners (``steps``, ``reads``) ask for slots; nothing else writes
the catalogue buffers.
"""

from __future__ import annotations

from collections import OrderedDict

from reason_plugins.spec import SpecError
from reason_plugins.steering import feature_rows, row_gates, vector_rows

_ROWS_KEPT = 1024  # sets of catalogue rows cached (by op and identity), least recently used dropped first


class SlotCatalogue:
    """The ops' slot buffers and what they hold; ``used`` (per step, made by the caller) maps
    ``(key, path)`` to the identities handed a slot so far in that step."""

    def __init__(self, ops: dict, saes: dict, max_slots: int, max_readout: int):
        self.ops, self.saes = ops, saes
        self.max_slots, self.max_readout = max_slots, max_readout
        self._rows: OrderedDict[tuple, dict] = OrderedDict()  # catalogue rows by identity, most recent last (bounded)
        self._content: dict[tuple, object] = {}  # (key, path, slot) -> what it holds now

    def _cached_rows(self, key: tuple, ident: tuple, make) -> dict:
        """Catalogue rows by identity, made once and kept while recently used (at most 1,024 sets)."""
        rows = self._rows.get((key, ident))
        if rows is None:
            rows = self._rows[(key, ident)] = make()
            while len(self._rows) > _ROWS_KEPT:
                self._rows.popitem(last=False)
        else:
            self._rows.move_to_end((key, ident))
        return rows

    def slot(self, used: dict, key: tuple, path: str, ident: tuple, constants, vector=None) -> int:
        """The slot of ``path`` ("rows": catalogued encoder/decoder rows of a feature or a ``vector``
        spec, "rec": reconstruct edits, "read": features read) holding ``ident`` this step; its buffers
        are rewritten only when it held something else."""
        taken = used.setdefault((key, path), {})
        if ident in taken:
            return taken[ident]
        slot = len(taken)
        capacity, name = (self.max_readout, "max_readout") if path == "read" else (self.max_slots, "max_slots")
        if slot >= capacity:  # the scheduler's admission (admission.py) keeps this from happening
            raise SpecError(f"more than {name}={capacity} distinct {'read' if path == 'read' else 'steering'} slots at "
                            f"{key[2]} in one step")
        taken[ident] = slot
        if self._content.get((key, path, slot)) == ident:
            return slot
        op = self.ops[key]
        if path == "read":
            (feature,) = ident
            if op.read_full:  # a column of the SAE's own encode
                op.r_feature[slot] = feature
            else:
                rows = self._cached_rows(key, ("delta", feature), lambda: feature_rows(self.saes[key], [feature], "delta"))
                op.r_enc_t[:, slot].copy_(rows["enc"][0])
                op.r_bias[slot] = rows["bias"][0]
                op.r_gate[slot] = row_gates(rows["thresh"][:1], rows["linear"][:1])[0]
        elif path == "rec":
            op.rec_feature[slot] = ident[1]
            op.rec_a[slot], op.rec_b[slot] = constants
        else:
            method, feature = ident
            rows = self._cached_rows(key, ident, (lambda: vector_rows(vector)) if vector is not None
                                     else (lambda: feature_rows(self.saes[key], [feature], method)))
            op.enc_t[:, slot].copy_(rows["enc"][0])
            op.bias[slot], op.dec[slot] = rows["bias"][0], rows["dec"][0]
            op.gate[slot] = row_gates(rows["thresh"][:1], rows["linear"][:1])[0]
        self._content[(key, path, slot)] = ident
        return slot

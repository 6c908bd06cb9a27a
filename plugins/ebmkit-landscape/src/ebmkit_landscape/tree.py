"""Single-linkage merging of a barrier matrix: the disconnectivity graph (pure Python, no torch).

Leaves ``0..K-1`` are basins at their minimum energies; each merge joins the two subtrees that
the lowest remaining barrier connects into a new node ``K, K+1, ...`` at that barrier's height
(Kruskal on the finite barriers). Basins that no finite barrier connects stay separate trees:
the result is a forest, one root per connected group.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field


@dataclass
class Merge:
    node: int  # the new node's id (>= number of basins)
    children: tuple[int, int]
    barrier: float  # the energy at which the two subtrees merge

    def to_dict(self) -> dict:
        return {"node": self.node, "children": list(self.children), "barrier": self.barrier}


@dataclass
class Tree:
    """The disconnectivity graph of ``n_leaves`` basins: merges in ascending barrier order."""

    n_leaves: int
    leaf_energy: list[float]
    merges: list[Merge] = field(default_factory=list)

    @property
    def roots(self) -> list[int]:
        """Nodes that were never merged further: one per tree of the forest."""
        used = {c for m in self.merges for c in m.children}
        nodes = list(range(self.n_leaves)) + [m.node for m in self.merges]
        return [v for v in nodes if v not in used]

    def height(self, node: int) -> float:
        if node < self.n_leaves:
            return self.leaf_energy[node]
        return self.merges[node - self.n_leaves].barrier

    def children(self, node: int) -> tuple[int, int] | None:
        return None if node < self.n_leaves else self.merges[node - self.n_leaves].children

    def leaves_in_order(self) -> list[int]:
        """Leaves ordered so that every subtree is contiguous (lower child first)."""
        out: list[int] = []

        def walk(v: int) -> None:
            ch = self.children(v)
            if ch is None:
                out.append(v)
                return
            a, b = sorted(ch, key=lambda c: self._lowest(c))
            walk(a)
            walk(b)

        for r in sorted(self.roots, key=self._lowest):
            walk(r)
        return out

    def _lowest(self, node: int) -> float:
        ch = self.children(node)
        if ch is None:
            return self.leaf_energy[node]
        return min(self._lowest(ch[0]), self._lowest(ch[1]))

    def leaves(self, node: int) -> list[int]:
        ch = self.children(node)
        return [node] if ch is None else sorted(self.leaves(ch[0]) + self.leaves(ch[1]))

    def groups_below(self, energy: float) -> list[list[int]]:
        """The basins grouped by the merges at or below ``energy``."""
        parent = {m_c: m.node for m in self.merges for m_c in m.children}
        tops = [v for v in range(self.n_leaves + len(self.merges)) if self.height(v) <= energy
                and (v not in parent or self.height(parent[v]) > energy)]
        return sorted(self.leaves(v) for v in tops)

    def to_dict(self) -> dict:
        return {"n_leaves": self.n_leaves, "merges": [m.to_dict() for m in self.merges],
                "roots": self.roots}


def single_linkage(barriers: list[list[float]], leaf_energy: list[float]) -> Tree:
    """The disconnectivity graph of a symmetric barrier matrix (``inf``: no known path)."""
    k = len(leaf_energy)
    edges = sorted((barriers[i][j], i, j) for i in range(k) for j in range(i + 1, k)
                   if math.isfinite(barriers[i][j]))
    parent = list(range(k))
    node_of = list(range(k))  # the tree node currently holding each union-find root
    tree = Tree(k, [float(e) for e in leaf_energy])

    def find(v: int) -> int:
        while parent[v] != v:
            parent[v] = parent[parent[v]]
            v = parent[v]
        return v

    for h, i, j in edges:
        ri, rj = find(i), find(j)
        if ri == rj:
            continue
        node = k + len(tree.merges)
        # a barrier is never below the minima it joins (the AD estimate guarantees it)
        low = max(tree.height(node_of[ri]), tree.height(node_of[rj]))
        tree.merges.append(Merge(node, (node_of[ri], node_of[rj]), max(float(h), low)))
        parent[rj] = ri
        node_of[ri] = node
    return tree

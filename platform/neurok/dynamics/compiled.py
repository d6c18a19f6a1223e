"""The variational rollout of a surrogate-decoded object on a floating frame, as one compiled loop.

A step of the torch path (integrators.Variational on mechanics.System) is about 2000 small tensor
operations, each ~1 us of dispatch, for arithmetic that takes a few: 2-3.5 ms a step, whatever the
object (issue 16). Here the same integrator runs in numba over the object's mass moments
(dynamics.modal), so a step costs O(r^2) arithmetic and no dispatch, and the whole rollout (step-size
choice, retries, energy guard, rechart) is one call. What it integrates is the torch path's Lagrangian
term for term: the metric, gravity, prior and support wall, point forces, wind and drag, Rayleigh
damping, pins and a ground plane (mechanics.py), with the same discrete equations (integrators.py) and
frame loop (simulator.rollout); it evaluates the surrogate exactly at each accepted step where the
torch path extrapolates to first order, and sums over every vertex's mass instead of a cubature's.
tests/test_dynamics_compiled.py holds the two paths to each other.

Coordinates s = (c, theta, q), as rigid.FloatingShape; float64 throughout.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numba
import numpy as np

RIGID = 6
TINY = np.finfo(np.float64).tiny
# J: the energy in play below which an energy error is round-off (the object's mass is 1 kg: a speed of
# 1.4 um/s). Without it an object at rest with nothing acting on it "blows up" on errors of 1e-30 J.
ENERGY_FLOOR = 1e-12

# cached: a fresh install compiles once, about a minute (simulator.warm_up). fastmath's reassociation
# and fused multiply-adds let the loops over vertices and hidden units vectorise (a step 10-20% faster);
# not its no-NaN/no-inf assumptions, which the guards need
jit = numba.njit(cache=True, nogil=True, fastmath={"reassoc", "contract"})

# failure codes of run(), read by the caller (simulator.failure)
OK, NOT_POSITIVE_DEFINITE, NOT_CONVERGED, NOT_FINITE, ENERGY = 0, 1, 2, 3, 4


class Params(NamedTuple):
    """The physics of one rollout (mechanics.Physics, with the forcing's wind and drag), float64."""

    stiffness: float  # kappa, on q
    damping: float  # Rayleigh c, on q
    gravity: np.ndarray  # (3,)
    eps: float
    pin_stiffness: float
    pin_damping: float
    ground: float  # -inf: none
    ground_stiffness: float
    ground_damping: float
    support: float
    support_stiffness: float
    drag: float
    wind: np.ndarray  # (3,)


class Stepping(NamedTuple):
    """The frame loop's settings (SimulatorConfig)."""

    fps: float
    frames: int
    steps: int  # cfg.steps_per_frame()
    most: int  # steps per frame at most
    max_omega_dt: float  # 0: no refinement
    max_omega_dt_contacts: float
    max_omega_dt_pins: float
    max_energy_error: float
    max_iterations: int
    tol: float


# ---- small dense algebra with a success flag (numba cannot catch LAPACK's exceptions)


@jit
def cholesky(A):
    """Lower L with L L^T = A, and whether A is positive definite."""
    n = A.shape[0]
    L = np.zeros_like(A)
    for j in range(n):
        d = A[j, j]
        for k in range(j):
            d -= L[j, k] * L[j, k]
        if not d > 0:
            return L, False
        L[j, j] = math.sqrt(d)
        for i in range(j + 1, n):
            e = A[i, j]
            for k in range(j):
                e -= L[i, k] * L[j, k]
            L[i, j] = e / L[j, j]
    return L, True


@jit
def lower_solve(L, B):
    """L^-1 B for lower-triangular L and B (n,) or (n, m)."""
    X = B.copy()
    for i in range(L.shape[0]):
        for j in range(i):
            X[i] -= L[i, j] * X[j]
        X[i] /= L[i, i]
    return X


@jit
def upper_solve(U, b):
    """U^-1 b for upper-triangular U and b (n,)."""
    x = b.copy()
    n = U.shape[0]
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n):
            x[i] -= U[i, j] * x[j]
        x[i] /= U[i, i]
    return x


@jit
def regularised(G, eps):
    """mechanics.regularised."""
    n = G.shape[0]
    out = G.copy()
    ridge = eps * np.trace(G) / n + TINY
    for i in range(n):
        out[i, i] += ridge
    return out


@jit
def solve_metric(G, b, eps):
    """mechanics.solve_metric, and whether the Cholesky factorisation held."""
    L, ok = cholesky(regularised(G, eps))
    if not ok:
        return np.zeros_like(b), False
    return upper_solve(L.T, lower_solve(L, b)), True


@jit
def lu_solve(A, b):
    """A^-1 b by Gaussian elimination with partial pivoting, and whether A was regular."""
    n = A.shape[0]
    M = A.copy()
    x = b.copy()
    for j in range(n):
        pivot = j
        for i in range(j + 1, n):
            if abs(M[i, j]) > abs(M[pivot, j]):
                pivot = i
        if not M[pivot, j] != 0:  # noqa: SIM202 (a NaN pivot counts as zero)
            return x, False
        if pivot != j:
            for col in range(n):
                M[j, col], M[pivot, col] = M[pivot, col], M[j, col]
            x[j], x[pivot] = x[pivot], x[j]
        for i in range(j + 1, n):
            f = M[i, j] / M[j, j]
            for col in range(j, n):
                M[i, col] -= f * M[j, col]
            x[i] -= f * x[j]
    return upper_solve(M, x), True


@jit
def fastest_mode(G, K):
    """simulator.fastest_mode for one object."""
    L, ok = cholesky(G)
    if not ok:
        return np.inf
    half = lower_solve(L, K)
    reduced = lower_solve(L, np.ascontiguousarray(half.T))
    return math.sqrt(max(np.linalg.eigvalsh(0.5 * (reduced + reduced.T)).max(), 0.0))


@jit
def cross(a, b):
    return np.array([a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]])


# ---- kinematics


@jit
def rotation(theta):
    """Rot(theta) and J_l(theta) (rigid.rotation_and_left_jacobian)."""
    t2 = theta @ theta
    if t2 < 1e-4:
        a = 1.0 + t2 * (-1 / 6 + t2 / 120)
        b = 0.5 + t2 * (-1 / 24 + t2 / 720)
        c = 1 / 6 + t2 * (-1 / 120 + t2 / 5040)
    else:
        t = math.sqrt(t2)
        a, b, c = math.sin(t) / t, (1 - math.cos(t)) / t2, (t - math.sin(t)) / (t * t2)
    K = np.zeros((3, 3))
    K[0, 1], K[0, 2], K[1, 2] = -theta[2], theta[1], -theta[0]
    K[1, 0], K[2, 0], K[2, 1] = theta[2], -theta[1], theta[0]
    K2 = K @ K
    eye = np.eye(3)
    return eye + a * K + b * K2, eye + b * K + c * K2


@jit
def evaluate(mo, s):
    """What the terms need at s: Rot, J_l, g (r,), dg/dq (r, k), and the mass moments' Y[i, j] =
    sum m E[i] y[j] (3, 3, r)."""
    R, Jl = rotation(s[3:RIGID])
    g, dg = network(mo.net, s[RIGID:])
    return R, Jl, g, dg, sums(mo.mass, g)


@jit
def network(net, q):
    """The surrogate's g (r,) and dg/dq (r, k) at q, in one pass over its hidden units (a step's largest
    cost: two products of r x h; tanh by one exp, half the time of libm's tanh)."""
    u = net.T @ q + net.offset
    h, k = net.A.shape
    features = np.empty(h)  # tanh(A u + b) - tanh(b)
    slopes = np.empty((k, h))  # (1 - tanh(A u + b)^2) A^T
    for f in range(h):
        z = net.b[f]
        for j in range(k):
            z += net.A[f, j] * u[j]
        e = math.exp(-2 * abs(z))
        t = math.copysign((1 - e) / (1 + e), z)
        features[f] = t - net.tanh_b[f]
        for j in range(k):
            slopes[j, f] = (1 - t * t) * net.A[f, j]
    return net.L @ u + net.W @ features, (net.L + net.W @ slopes.T) @ net.T


@jit
def sums(mom, g):
    """Y[i, j] = sum w E[i] y[j] (3, 3, r) of moments at g."""
    r = g.shape[0]
    return mom.F + (mom.K.reshape(9 * r, r) @ g).reshape(3, 3, r)


@jit
def second(mom, g, Y):
    """sum w y y^T (3, 3) of moments at g, Y = sums(mom, g)."""
    r = g.shape[0]
    return mom.S0 + (mom.F.reshape(9, r) @ g).reshape(3, 3).T + (Y.reshape(9, r) @ g).reshape(3, 3)


@jit
def assemble(weight, first, S, P, H, BB, ev):
    """sum w J_v^T J_v (n, n) of a set of vertices from its sums in the body frame: weight = sum w,
    first = sum w y, S = sum w y y^T, P = sum w E_v dg (3, k), H = sum w hat(y_v) E_v dg (3, k) and
    BB = sum w dg^T E_v^T E_v dg (k, k). Its blocks: weight I; -hat(R first) J_l; R P; the inertia
    J_l^T R (tr S I - S) R^T J_l; the coupling J_l^T R H; BB."""
    R, Jl = ev[0], ev[1]
    k = P.shape[1]
    n = RIGID + k
    G = np.zeros((n, n))
    for i in range(3):
        G[i, i] = weight
    centre = R @ first
    frame = np.zeros((3, 3))  # -hat(R first) J_l: column i is J_l[:, i] x R first
    for i in range(3):
        frame[:, i] = cross(Jl[:, i], centre)
    G[:3, 3:RIGID] = frame
    G[3:RIGID, :3] = frame.T
    deform = R @ P
    G[:3, RIGID:] = deform
    G[RIGID:, :3] = deform.T
    RJ = R.T @ Jl
    G[3:RIGID, 3:RIGID] = RJ.T @ (np.trace(S) * np.eye(3) - S) @ RJ
    coupling = RJ.T @ H
    G[3:RIGID, RIGID:] = coupling
    G[RIGID:, 3:RIGID] = coupling.T
    G[RIGID:, RIGID:] = BB
    return G


@jit
def gram(mom, ev, Y):
    """sum w J_v^T J_v (n, n) from moments (Y = sums(mom, g)): for the masses the metric G (their first
    moments vanish about the centre of mass), for the pins their stiffness's shape."""
    g, dg = ev[2], ev[3]
    H = np.empty((3, Y.shape[2]))  # sum w hat(y) E
    H[0], H[1], H[2] = Y[2, 1] - Y[1, 2], Y[0, 2] - Y[2, 0], Y[1, 0] - Y[0, 1]
    first = mom.a + mom.E @ g
    return assemble(mom.weight, first, second(mom, g, Y), mom.E @ dg, H @ dg, dg.T @ mom.KK @ dg, ev)


@jit
def decode(mo, a, E, coords, rates, x, xdot):
    """Every vertex's position and velocity into x, xdot (F, V, 3), of any float type, at frames of s and
    s' (F, n), from its centred position a (V, 3) and modes E (V, 3, r): x = c + R y,
    x' = c' + (J_l theta') x R y + R E dg q'. The modes' part of all frames at once, two matrix products
    (F, r) x (r, 3V) that read E once (not once a frame), then the frame's motion a vertex at a time: on
    a large mesh the decode is bound by memory, and this writes each output number once."""
    frames, V, r = coords.shape[0], a.shape[0], E.shape[2]
    g, rate = np.empty((frames, r)), np.empty((frames, r))
    for f in range(frames):
        ev = evaluate(mo, coords[f])
        g[f], rate[f] = ev[2], ev[3] @ rates[f, RIGID:]
    modes = E.reshape(V * 3, r).T
    shapes, moving = (g @ modes).reshape(frames, V, 3), (rate @ modes).reshape(frames, V, 3)
    for f in range(frames):
        s, v = coords[f], rates[f]
        R, Jl = rotation(s[3:RIGID])
        w = Jl @ v[3:RIGID]
        for p in range(V):
            y0, y1, y2 = a[p, 0] + shapes[f, p, 0], a[p, 1] + shapes[f, p, 1], a[p, 2] + shapes[f, p, 2]
            d0, d1, d2 = moving[f, p, 0], moving[f, p, 1], moving[f, p, 2]
            t0 = R[0, 0] * y0 + R[0, 1] * y1 + R[0, 2] * y2  # R y
            t1 = R[1, 0] * y0 + R[1, 1] * y1 + R[1, 2] * y2
            t2 = R[2, 0] * y0 + R[2, 1] * y1 + R[2, 2] * y2
            x[f, p, 0], x[f, p, 1], x[f, p, 2] = s[0] + t0, s[1] + t1, s[2] + t2
            xdot[f, p, 0] = v[0] + w[1] * t2 - w[2] * t1 + R[0, 0] * d0 + R[0, 1] * d1 + R[0, 2] * d2
            xdot[f, p, 1] = v[1] + w[2] * t0 - w[0] * t2 + R[1, 0] * d0 + R[1, 1] * d1 + R[1, 2] * d2
            xdot[f, p, 2] = v[2] + w[0] * t1 - w[1] * t0 + R[2, 0] * d0 + R[2, 1] * d1 + R[2, 2] * d2


@jit
def pullback(mo, base_s, base, at_s, at):
    """sum_v m_v J_v(base)^T (x_v(at) - x_v(base)) (n,): J^T M of a displacement, from the moments."""
    Rb, Jlb, gb, dgb, Yb = base
    Ra, _, ga, _, Ya = at
    out = np.zeros(base_s.shape[0])
    mass = mo.mass
    out[:3] = mass.weight * (at_s[:3] - base_s[:3])
    Q = Rb.T @ Ra
    r = ga.shape[0]
    # sum m y_b y_a^T (as second(), with one side at g_b)
    P = mass.S0 + (mass.F.reshape(9, r) @ ga).reshape(3, 3).T + (Ya.reshape(9, r) @ gb).reshape(3, 3)
    PQ = P @ Q.T
    turn = np.array([PQ[1, 2] - PQ[2, 1], PQ[2, 0] - PQ[0, 2], PQ[0, 1] - PQ[1, 0]])
    out[3:RIGID] = Jlb.T @ (Rb @ turn)
    deform = Q.reshape(9) @ Ya.reshape(9, r) - Yb[0, 0] - Yb[1, 1] - Yb[2, 2]
    out[RIGID:] = dgb.T @ deform
    return out


@jit
def stretch(pins, c, R, g):
    """sum w |c + R y_v - p_v|^2 over the pinned vertices, a vertex at a time: no temporaries."""
    energy = 0.0
    for v in range(pins.weight.shape[0]):
        y0, y1, y2 = pins.a[v, 0], pins.a[v, 1], pins.a[v, 2]
        for j in range(g.shape[0]):
            y0 += pins.E[v, 0, j] * g[j]
            y1 += pins.E[v, 1, j] * g[j]
            y2 += pins.E[v, 2, j] * g[j]
        total = 0.0
        for i in range(3):
            d = c[i] + R[i, 0] * y0 + R[i, 1] * y1 + R[i, 2] * y2 - pins.targets[v, i]
            total += d * d
        energy += pins.weight[v] * total
    return energy


@jit
def near_ground(ground, height, R, size, within):
    """The vertices whose height above the ground may be below `within` (height: the centre's), culled
    by |E_v g| <= reach_v |g| (size = |g|): first the whole object by its bounding sphere, then each."""
    if height - ground.radius - ground.farthest * size >= within:
        return np.empty(0, np.int64)
    near = np.empty(ground.weight.shape[0], np.int64)
    count = 0
    for v in range(near.shape[0]):
        turned_a = ground.a[v, 0] * R[1, 0] + ground.a[v, 1] * R[1, 1] + ground.a[v, 2] * R[1, 2]
        if height + turned_a - ground.reach[v] * size < within:
            near[count] = v
            count += 1
    return near[:count]


@jit
def ground_contact(ground, prm, s, ev, matrices):
    """The ground's penalty energy and gradient (n,) and, with `matrices`, the shapes of its stiffness
    and damping (n, n): sum m J^T J over the vertices within 0.1 of the plane (they touch it within a
    frame) and over those below it (mechanics.stiffness_matrix, vertex_damping). A vertex at a time, its
    sums in the body frame (assemble), over the vertices near_ground leaves."""
    R, Jl, g, dg = ev[0], ev[1], ev[2], ev[3]
    r, k = g.shape[0], dg.shape[1]
    reach = 0.1 if matrices else 0.0
    height0 = s[1] - prm.ground
    energy = 0.0
    grad = np.zeros(RIGID + k)
    moment = np.zeros(3)
    along = np.zeros(r)  # sum E_v^T R^T f_v
    # the sums of the vertices within reach above the plane [0] and below it [1]
    weight, first, S = np.zeros(2), np.zeros((2, 3)), np.zeros((2, 3, 3))
    P, H, BB = np.zeros((2, 3, k)), np.zeros((2, 3, k)), np.zeros((2, k, k))
    y, B = np.empty(3), np.empty((3, k))
    for v in near_ground(ground, height0, R, math.sqrt(g @ g), reach):
        for i in range(3):
            acc = ground.a[v, i]
            for j in range(r):
                acc += ground.E[v, i, j] * g[j]
            y[i] = acc
        height = height0 + R[1, 0] * y[0] + R[1, 1] * y[1] + R[1, 2] * y[2]
        if not height < reach:
            continue
        m = ground.weight[v]
        below = height < 0
        if below:  # f_v = (0, kappa m height, 0)
            push = prm.ground_stiffness * m * height
            energy += 0.5 * push * height
            grad[1] += push
            moment[0] -= (R[2, 0] * y[0] + R[2, 1] * y[1] + R[2, 2] * y[2]) * push
            moment[2] += (R[0, 0] * y[0] + R[0, 1] * y[1] + R[0, 2] * y[2]) * push
            for i in range(3):
                for j in range(r):
                    along[j] += push * R[1, i] * ground.E[v, i, j]
        if not matrices:
            continue
        for i in range(3):
            for j in range(k):
                acc = 0.0
                for mode in range(r):
                    acc += ground.E[v, i, mode] * dg[mode, j]
                B[i, j] = acc
        c = 1 if below else 0
        weight[c] += m
        for i in range(3):
            first[c, i] += m * y[i]
            for j in range(3):
                S[c, i, j] += m * y[i] * y[j]
        for j in range(k):
            P[c, 0, j] += m * B[0, j]
            P[c, 1, j] += m * B[1, j]
            P[c, 2, j] += m * B[2, j]
            H[c, 0, j] += m * (y[1] * B[2, j] - y[2] * B[1, j])
            H[c, 1, j] += m * (y[2] * B[0, j] - y[0] * B[2, j])
            H[c, 2, j] += m * (y[0] * B[1, j] - y[1] * B[0, j])
            for i in range(k):
                BB[c, i, j] += m * (B[0, i] * B[0, j] + B[1, i] * B[1, j] + B[2, i] * B[2, j])
    grad[3:RIGID] = Jl.T @ moment
    grad[RIGID:] = dg.T @ along
    if not matrices:
        return energy, grad, np.zeros((0, 0)), np.zeros((0, 0))
    under = assemble(weight[1], first[1], S[1], P[1], H[1], BB[1], ev)
    touching = under + assemble(weight[0], first[0], S[0], P[0], H[0], BB[0], ev)
    return energy, grad, touching, under


@jit
def pinned(pins, s, ev, matrices):
    """sum w |x_v - p_v|^2 over the pinned vertices, half its gradient, sum w J_v^T (x_v - p_v) (n,), and
    (with `matrices`) sum w J_v^T J_v (n, n): the last two from their moments, O(r^2) however many are
    pinned (with x_v = c + R y_v, x - p = (c - p) + R y is linear in the moments)."""
    R, Jl, g, dg = ev[0], ev[1], ev[2], ev[3]
    mom = pins.moments
    c = s[:3]
    Y = sums(mom, g)
    centre = R @ (mom.a + mom.E @ g)  # R sum w y
    r = g.shape[0]
    Yp = pins.a_target + (pins.E_target.reshape(9, r) @ g).reshape(3, 3)  # sum w y p^T
    RYp = R @ Yp
    energy = stretch(pins, c, R, g)
    grad = np.zeros(s.shape[0])
    grad[:3] = mom.weight * c + centre - pins.target
    held = np.array([RYp[1, 2] - RYp[2, 1], RYp[2, 0] - RYp[0, 2], RYp[0, 1] - RYp[1, 0]])
    grad[3:RIGID] = Jl.T @ (cross(centre, c) - held)
    # sum w E^T R^T (c + R y - p)
    deform = mom.E.T @ (R.T @ c) + Y[0, 0] + Y[1, 1] + Y[2, 2]
    deform -= np.ascontiguousarray(R.T).reshape(9) @ pins.E_target.reshape(9, r)
    grad[RIGID:] = dg.T @ deform
    return energy, grad, gram(mom, ev, Y) if matrices else np.zeros((0, 0))


@jit
def springs(mo, prm, pins, ground, s, ev, matrices):
    """The stiff springs' energy S and gradient (n,) (mechanics.stiff_potential: wall, pins, ground);
    with `matrices`, also the contacts' and the pins' Gauss-Newton stiffness and the springs' damping
    (mechanics.stiffness_matrix, vertex_damping), each (n, n)."""
    n = s.shape[0]
    q = s[RIGID:]
    norm = math.sqrt(q @ q)
    past = max(norm - prm.support, 0.0)
    energy = 0.5 * prm.support_stiffness * past * past
    grad = np.zeros(n)
    grad[RIGID:] = prm.support_stiffness * past * q / max(norm, TINY)
    contacts, held, damping = np.zeros((n, n)), np.zeros((n, n)), np.zeros((n, n))
    if matrices and norm > 0.8 * prm.support:
        for i in range(RIGID, n):
            contacts[i, i] = prm.support_stiffness
    if pins.moments.weight > 0:
        e, f, gram_pins = pinned(pins, s, ev, matrices)
        energy += 0.5 * prm.pin_stiffness * e
        grad += prm.pin_stiffness * f
        if matrices:
            held += prm.pin_stiffness * gram_pins
            damping += prm.pin_damping * gram_pins
    if np.isfinite(prm.ground) and ground.weight.shape[0]:
        e, f, touching, under = ground_contact(ground, prm, s, ev, matrices)
        energy += e
        grad += f
        if matrices:
            contacts += prm.ground_stiffness * touching
            damping += prm.ground_damping * under
    return energy, grad, contacts, held, damping


class Terms(NamedTuple):
    """mechanics.Terms of one object, with the stiff springs' stiffness (the step's slope needs it)."""

    G: np.ndarray
    grad_V: np.ndarray
    S: float
    grad_S: np.ndarray
    Q: np.ndarray
    D: np.ndarray
    K_S: np.ndarray  # contacts + pins
    contacts: np.ndarray
    pins: np.ndarray


@jit
def terms(mo, prm, pins, ground, loads, s, ev, t):
    """mechanics.terms_from_jacobian from the moments."""
    R, Jl, g, dg, Y = ev
    G = gram(mo.mass, ev, ev[4])
    n = s.shape[0]
    grad_V = np.zeros(n)
    grad_V[:3] = -mo.mass.weight * prm.gravity
    grad_V[RIGID:] = prm.stiffness * s[RIGID:]
    S, grad_S, contacts, held, D = springs(mo, prm, pins, ground, s, ev, True)
    Q = np.zeros(n)
    Q[:3] = prm.drag * mo.mass.weight * prm.wind
    for p in range(loads.force.shape[0]):
        if loads.start[p] <= t and t < loads.end[p]:
            f = loads.force[p]
            Q[:3] += f
            Q[3:RIGID] += Jl.T @ cross(R @ (loads.a[p] + loads.E[p] @ g), f)
            Q[RIGID:] += dg.T @ (loads.E[p].T @ (R.T @ f))
    D += prm.drag * G
    D[RIGID:, RIGID:] += prm.damping * G[RIGID:, RIGID:]
    return Terms(G, grad_V, S, grad_S, Q, D, contacts + held, contacts, held)


class State(NamedTuple):
    """integrators.VariationalState of one object (x and J are the moments' ev)."""

    s: np.ndarray
    ev: tuple
    tm: Terms
    p: np.ndarray
    v: np.ndarray
    work: float
    bend: np.ndarray


@jit
def init(mo, prm, pins, ground, loads, s, v, t, work):
    ev = evaluate(mo, s)
    tm = terms(mo, prm, pins, ground, loads, s, ev, t)
    return State(s, ev, tm, tm.G @ v, v, work, np.zeros_like(s))


@jit
def mean_gradient(dq, S0, grad0, S1, grad1):
    """integrators.mean_gradient for one object."""
    trapezoid = 0.5 * (grad0 + grad1)
    change = (grad1 - grad0) @ dq
    weight = 0.0 if change == 0 else min(max((S1 - S0 - trapezoid @ dq) / change, -0.5), 0.5)
    return trapezoid + weight * (grad1 - grad0)


@jit
def residual(mo, prm, pins, ground, state, s, ev, target, dt):
    """integrators.Variational.solve's residual at s."""
    tm = state.tm
    dq = s - state.s
    S1, grad1, _, _, _ = springs(mo, prm, pins, ground, s, ev, False)
    mean = mean_gradient(dq, tm.S, tm.grad_S, S1, grad1)
    return (
        pullback(mo, state.s, state.ev, s, ev)
        + 0.5 * dt * (tm.D @ dq)
        + 0.5 * dt * dt * (mean - tm.grad_S)
        - target
    )


@jit
def step(mo, prm, pins, ground, loads, state, t, dt, max_iterations, tol):
    """integrators.Variational.step: the new state, a failure code and its value."""
    tm = state.tm
    b = state.p + 0.5 * dt * (tm.Q - tm.grad_V - tm.grad_S)
    slope = tm.G + 0.5 * dt * tm.D + 0.25 * dt * dt * tm.K_S
    direction, ok = solve_metric(slope, b, prm.eps)
    if not ok:
        return state, NOT_POSITIVE_DEFINITE, 0.0
    linear = state.s + dt * direction
    target = dt * b
    slope = regularised(slope, prm.eps)
    s = linear + state.bend
    ev = evaluate(mo, s)
    res = residual(mo, prm, pins, ground, state, s, ev, target, dt)
    converged = False
    change = np.inf
    for _ in range(max_iterations):
        correction, regular = lu_solve(slope, -res)
        if not regular:
            return state, NOT_CONVERGED, np.inf
        change = math.sqrt(max(correction @ (tm.G @ correction), 0.0) / mo.mass.weight)
        s = s + correction
        ev = evaluate(mo, s)
        if not change > tol:  # a NaN counts as small: the frame's finiteness check catches the state
            converged = True
            break
        new = residual(mo, prm, pins, ground, state, s, ev, target, dt)
        secant = (new - res - slope @ correction) / max(correction @ correction, TINY)
        slope = slope + np.outer(secant, correction)
        res = new
    if not converged:
        return state, NOT_CONVERGED, change
    arriving = -pullback(mo, s, ev, state.s, state.ev) / dt
    new_tm = terms(mo, prm, pins, ground, loads, s, ev, t + dt)
    dq = s - state.s
    u = dq / dt
    start = tm.Q - tm.D @ u
    velocity, ok1 = solve_metric(new_tm.G, arriving, prm.eps)
    end = new_tm.Q - new_tm.D @ velocity
    mean = mean_gradient(dq, tm.S, tm.grad_S, new_tm.S, new_tm.grad_S)
    p = arriving + 0.5 * dt * (end - new_tm.grad_V - mean)
    v, ok2 = solve_metric(new_tm.G, p, prm.eps)
    if not (ok1 and ok2):
        return state, NOT_POSITIVE_DEFINITE, 0.0
    work = state.work + 0.25 * dt * (start @ (state.v + u) + end @ (u + v))
    return State(s, ev, new_tm, p, v, work, s - linear), OK, 0.0


@jit
def frame(mo, prm, pins, ground, loads, state, t0, steps, st):
    """simulator._frame: the state one output frame on, or the failure (code, step, time, value)."""
    dt = 1 / (st.fps * steps)
    for i in range(1, steps + 1):
        t = t0 + i * dt
        state, code, value = step(mo, prm, pins, ground, loads, state, t - dt, dt, st.max_iterations, st.tol)
        if code != OK:
            return state, code, i, t, value
    finite = np.isfinite(state.s).all() and np.isfinite(state.v).all() and np.isfinite(state.p).all()
    if not (finite and np.isfinite(state.work)):
        return state, NOT_FINITE, steps, t0 + steps * dt, 0.0
    return state, OK, steps, t0 + steps * dt, 0.0


@jit
def energies(mo, prm, state):
    """Kinetic and potential energy (simulator.rollout's observe)."""
    q = state.s[RIGID:]
    kinetic = 0.5 * state.v @ (state.tm.G @ state.v)
    potential = 0.5 * prm.stiffness * (q @ q) - mo.mass.weight * (prm.gravity @ state.s[:3]) + state.tm.S
    return kinetic, potential


@jit
def steps_for(state, prm, st):
    """simulator.steps_per_frame at the state."""
    if not st.max_omega_dt:
        return st.steps
    tm = state.tm
    soft = np.zeros_like(tm.G)
    for i in range(RIGID, soft.shape[0]):
        soft[i, i] = prm.stiffness
    omegas = (
        fastest_mode(tm.G, soft),
        fastest_mode(tm.G, soft + tm.contacts),
        fastest_mode(tm.G, soft + tm.contacts + tm.pins),
    )
    limits = (st.max_omega_dt, st.max_omega_dt_contacts, st.max_omega_dt_pins)
    needed = 0.0
    for i in range(3):
        if np.isinf(omegas[i]):
            return st.most
        needed = max(needed, omegas[i] / limits[i])
    return min(max(st.steps, math.ceil(needed / st.fps)), st.most)


@jit
def rechart(mo, prm, pins, ground, loads, state, t):
    """rigid.FloatingShape.rechart: |theta| > pi moved to the equivalent theta inside, the same motion."""
    theta = state.s[3:RIGID]
    angle = math.sqrt(theta @ theta)
    if not angle > math.pi:
        return state
    new = theta * (1 - 2 * math.pi / angle)
    omega = rotation(theta)[1] @ state.v[3:RIGID]
    rate, _ = lu_solve(rotation(new)[1], omega)
    s, v = state.s.copy(), state.v.copy()
    s[3:RIGID], v[3:RIGID] = new, rate
    return init(mo, prm, pins, ground, loads, s, v, t, state.work)


@jit
def run(mo, prm, pins, ground, loads, s0, v0, st):
    """simulator.rollout for one object: per frame (F + 1) s, s', kinetic and potential energy and work,
    the steps of each frame interval, and a failure (code, step, time, value, dt) where code != OK."""
    n = s0.shape[0]
    coords, rates = np.zeros((st.frames + 1, n)), np.zeros((st.frames + 1, n))
    kinetic, potential, work = np.zeros(st.frames + 1), np.zeros(st.frames + 1), np.zeros(st.frames + 1)
    used = np.zeros(st.frames, np.int64)
    state = init(mo, prm, pins, ground, loads, s0, v0, 0.0, 0.0)
    coords[0], rates[0] = state.s, state.v
    kinetic[0], potential[0] = energies(mo, prm, state)
    peak = kinetic[0]
    failure = (OK, 0, 0.0, 0.0, 0.0)
    for f in range(st.frames):
        steps = steps_for(state, prm, st)
        while True:
            new, code, at, t, value = frame(mo, prm, pins, ground, loads, state, f / st.fps, steps, st)
            if code == OK:
                T, V = energies(mo, prm, new)
                error = T + V - kinetic[0] - potential[0] - new.work
                value = abs(error) / (max(peak, T) + abs(new.work) + ENERGY_FLOOR)
                if not value <= st.max_energy_error:
                    code = ENERGY
            if code == OK:
                break
            if 2 * steps > st.most:
                failure = (code, used[:f].sum() + at, t, value, 1 / (st.fps * steps))
                return (
                    coords[: f + 1],
                    rates[: f + 1],
                    kinetic[: f + 1],
                    potential[: f + 1],
                    work[: f + 1],
                    used[:f],
                    failure,
                )
            steps *= 2
        state = rechart(mo, prm, pins, ground, loads, new, (f + 1) / st.fps)
        used[f] = steps
        coords[f + 1], rates[f + 1], work[f + 1] = state.s, state.v, state.work
        kinetic[f + 1], potential[f + 1] = energies(mo, prm, state)
        peak = max(peak, kinetic[f + 1])
    return coords, rates, kinetic, potential, work, used, failure

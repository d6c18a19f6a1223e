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

# cached: a fresh install compiles once, about a minute (simulator.warm_up). fastmath (without the
# no-NaN/no-inf assumptions the guards need) changed nothing measurable: a step's time is in small
# arrays' allocation and reference counting, not arithmetic
jit = numba.njit(cache=True, nogil=True)

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
        d = A[j, j] - L[j, :j] @ L[j, :j]
        if not d > 0:
            return L, False
        L[j, j] = math.sqrt(d)
        for i in range(j + 1, n):
            L[i, j] = (A[i, j] - L[i, :j] @ L[j, :j]) / L[j, j]
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
    y = lower_solve(L, b)
    x = y.copy()
    n = L.shape[0]
    for i in range(n - 1, -1, -1):
        for j in range(i + 1, n):
            x[i] -= L[j, i] * x[j]
        x[i] /= L[i, i]
    return x, True


@jit
def lu_solve(A, b):
    """A^-1 b by Gaussian elimination with partial pivoting, and whether A was regular."""
    n = A.shape[0]
    M = A.copy()
    x = b.copy()
    for j in range(n):
        pivot = j + np.argmax(np.abs(M[j:, j]))
        if not M[pivot, j] != 0:  # noqa: SIM202 (a NaN pivot counts as zero)
            return x, False
        if pivot != j:
            for col in range(n):
                M[j, col], M[pivot, col] = M[pivot, col], M[j, col]
            x[j], x[pivot] = x[pivot], x[j]
        for i in range(j + 1, n):
            f = M[i, j] / M[j, j]
            M[i, j:] -= f * M[j, j:]
            x[i] -= f * x[j]
    for i in range(n - 1, -1, -1):
        x[i] = (x[i] - M[i, i + 1 :] @ x[i + 1 :]) / M[i, i]
    return x, True


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
    net = mo.net
    u = net.T @ s[RIGID:] + net.offset
    t = np.tanh(net.A @ u + net.b)
    g = net.L @ u + net.W @ (t - net.tanh_b)
    slope = net.L + (net.W * (1 - t * t)) @ net.A
    return R, Jl, g, slope @ net.T, sums(mo.mass, g)


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
def gram(mom, ev, Y):
    """sum w J_v^T J_v (n, n) from moments (Y = sums(mom, g)): for the masses, the metric G, whose blocks
    are M I, the inertia J_l^T R (tr S I - S) R^T J_l, the coupling J_l^T R H dg and dg^T (sum m E^T E) dg
    (the first moments vanish about the centre of mass); for the pins, their stiffness's shape."""
    R, Jl, g, dg = ev[0], ev[1], ev[2], ev[3]
    k = dg.shape[1]
    n = RIGID + k
    G = np.zeros((n, n))
    for i in range(3):
        G[i, i] = mom.weight
    centre = R @ (mom.a + mom.E @ g)  # R sum w y
    frame = np.zeros((3, 3))  # -hat(R sum w y) J_l: column i is J_l[:, i] x R sum w y
    for i in range(3):
        frame[:, i] = cross(Jl[:, i], centre)
    G[:3, 3:RIGID] = frame
    G[3:RIGID, :3] = frame.T
    deform = R @ (mom.E @ dg)
    G[:3, RIGID:] = deform
    G[RIGID:, :3] = deform.T
    S = second(mom, g, Y)
    RJ = R.T @ Jl
    G[3:RIGID, 3:RIGID] = RJ.T @ (np.trace(S) * np.eye(3) - S) @ RJ
    H = np.empty((3, Y.shape[2]))  # sum w hat(y) E
    H[0], H[1], H[2] = Y[2, 1] - Y[1, 2], Y[0, 2] - Y[2, 0], Y[1, 0] - Y[0, 1]
    coupling = RJ.T @ (H @ dg)
    G[3:RIGID, RIGID:] = coupling
    G[RIGID:, 3:RIGID] = coupling.T
    G[RIGID:, RIGID:] = dg.T @ mom.KK @ dg
    return G


@jit
def decode(mo, a, E, coords, rates):
    """Every vertex's position and velocity (F, V, 3) at frames of s and s' (F, n), from its centred
    position a (V, 3) and modes E (V, 3, r): x = c + R y, x' = c' + (J_l theta') x R y + R E dg q'.
    The modes' part of all frames at once, two matrix products (F, r) x (r, 3V): E is read twice, not
    twice a frame. On a large mesh the decode is bound by memory: its output is 2 x F x V x 3 floats."""
    frames, V, r = coords.shape[0], a.shape[0], E.shape[2]
    g, rate = np.empty((frames, r)), np.empty((frames, r))
    for f in range(frames):
        ev = evaluate(mo, coords[f])
        g[f], rate[f] = ev[2], ev[3] @ rates[f, RIGID:]
    modes = E.reshape(V * 3, r).T.copy()
    shapes, moving = (g @ modes).reshape(frames, V, 3), (rate @ modes).reshape(frames, V, 3)
    x, xdot = np.empty((frames, V, 3)), np.empty((frames, V, 3))
    for f in range(frames):
        s, v = coords[f], rates[f]
        R, Jl = rotation(s[3:RIGID])
        turned = (a + shapes[f]) @ R.T
        omega = Jl @ v[3:RIGID]
        deform = moving[f] @ R.T
        x[f] = s[:3] + turned
        for i in range(3):
            j, k = (i + 1) % 3, (i + 2) % 3
            xdot[f, :, i] = v[i] + omega[j] * turned[:, k] - omega[k] * turned[:, j] + deform[:, i]
    return x, xdot


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
def turned(ev, a, E):
    """R y (N, 3) of the vertices at y = a + E g about the centre, a (N, 3), E (N, 3, r)."""
    R, g = ev[0], ev[2]
    N, r = a.shape[0], g.shape[0]
    return (a + (E.reshape(N * 3, r) @ g).reshape(N, 3)) @ R.T


@jit
def pull(ev, E, Ry, f):
    """sum_v J_v^T f_v (n,) of forces f (N, 3) at vertices with modes E and turned positions Ry, without
    forming J: the frame takes their sum and moment, q the modes' share, dg^T E^T R^T f."""
    R, Jl, dg = ev[0], ev[1], ev[3]
    out = np.zeros(RIGID + dg.shape[1])
    out[:3] = f.sum(0)
    moment = np.zeros(3)
    for i in range(3):
        j, k = (i + 1) % 3, (i + 2) % 3
        moment[i] = (Ry[:, j] * f[:, k] - Ry[:, k] * f[:, j]).sum()
    out[3:RIGID] = Jl.T @ moment
    body = np.ascontiguousarray(f @ R)  # R^T f_v
    out[RIGID:] = dg.T @ (E.reshape(E.shape[0] * 3, E.shape[2]).T @ body.reshape(body.size))
    return out


@jit
def jacobians(ev, E, Ry):
    """J = dx/ds (N, 3, n) of vertices with modes E (N, 3, r) and turned positions Ry (N, 3)
    (rigid.floating_jacobian)."""
    R, Jl, dg = ev[0], ev[1], ev[3]
    N, r, k = E.shape[0], E.shape[2], dg.shape[1]
    J = np.zeros((N, 3, RIGID + k))
    for i in range(3):
        J[:, i, i] = 1.0
        axis = Jl[:, i]  # d(R y)/d theta_i = J_l[:, i] x (R y)
        J[:, 0, 3 + i] = axis[1] * Ry[:, 2] - axis[2] * Ry[:, 1]
        J[:, 1, 3 + i] = axis[2] * Ry[:, 0] - axis[0] * Ry[:, 2]
        J[:, 2, 3 + i] = axis[0] * Ry[:, 1] - axis[1] * Ry[:, 0]
    along = (E.reshape(N * 3, r) @ dg).reshape(N, 3, k)
    for i in range(3):
        J[:, i, RIGID:] = R[i, 0] * along[:, 0] + R[i, 1] * along[:, 1] + R[i, 2] * along[:, 2]
    return J


@jit
def weighted_gram(J, w):
    """sum_v w_v J_v^T J_v (n, n) of J (N, 3, n) (mechanics.weighted_gram)."""
    rows = J.reshape(J.shape[0] * 3, J.shape[2])
    return (rows * np.repeat(w, 3)[:, None]).T @ rows


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
    stretch = c + turned(ev, pins.vertices.a, pins.vertices.E) - pins.targets
    energy = pins.vertices.weight @ (stretch * stretch).sum(1)
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
    (mechanics.stiffness_matrix, vertex_damping), each (n, n). The ground acts on the vertices within
    0.1 of it (for the matrices) or below it: the others are culled by a bound, |E_v g| <= |E_v| |g|."""
    R, g = ev[0], ev[2]
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
        reach = 0.1 if matrices else 0.0
        lowest = s[1] - prm.ground + ground.a @ R[1] - ground.reach * math.sqrt(g @ g)
        near = np.nonzero(lowest < reach)[0]
        if near.size:
            E = ground.E[near]
            Ry = turned(ev, ground.a[near], E)
            height = s[1] + Ry[:, 1] - prm.ground
            depth = np.minimum(height, 0.0)
            m = ground.weight[near] * (height < reach)
            push = np.zeros((near.size, 3))
            push[:, 1] = prm.ground_stiffness * m * depth
            energy += 0.5 * prm.ground_stiffness * (m * depth * depth).sum()
            grad += pull(ev, E, Ry, push)
            if matrices:
                J = jacobians(ev, E, Ry)
                contacts += prm.ground_stiffness * weighted_gram(J, m)
                damping += prm.ground_damping * weighted_gram(J, m * (depth < 0))
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
def mean_gradient(dq, G, S0, grad0, S1, grad1):
    """integrators.mean_gradient for one object."""
    trapezoid = 0.5 * (grad0 + grad1)
    bound = 0.5 * abs((grad1 - grad0) @ dq)
    error = min(max(S1 - S0 - trapezoid @ dq, -bound), bound)
    along = G @ dq
    return trapezoid + error / max(dq @ along, TINY) * along


@jit
def residual(mo, prm, pins, ground, state, s, ev, target, dt):
    """integrators.Variational.solve's residual at s."""
    tm = state.tm
    dq = s - state.s
    S1, grad1, _, _, _ = springs(mo, prm, pins, ground, s, ev, False)
    mean = mean_gradient(dq, tm.G, tm.S, tm.grad_S, S1, grad1)
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
    mean = mean_gradient(dq, tm.G, tm.S, tm.grad_S, new_tm.S, new_tm.grad_S)
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
                value = abs(error) / (max(peak, T) + abs(new.work) + TINY)
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

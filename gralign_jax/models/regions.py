"""Region prompting and region uncertainty (method.md section 3).

K learnable prompts P (K, d) softly assign the gated visual tokens V_hat to regions:
A = sigmoid(V_hat . P_hat^T) with P_hat the l2-normalised prompts (sigmoid, so a token
may belong to several regions), column-normalised over the valid tokens into A_hat.
Region k is the Gaussian N(mu_k, diag sigma_k^2) with mu_k = sum_l A_hat[l,k] V_hat_l
and log sigma_k^2 = MLP(mu_k); the image is the mixture of the K Gaussians.

Sampling. The paper draws one point per token and region, z_lk = mu_k + sigma_k eps_lk,
and averages them with A_hat. Because sum_l A_hat[l,k] = 1,
  sum_l A_hat[l,k] z_lk = mu_k + sigma_k * sum_l A_hat[l,k] eps_lk,
and a weighted sum of independent standard normals is N(0, sum_l A_hat[l,k]^2) per
dimension. So the same distribution comes from a single draw
  u_k = mu_k + ||A_hat[:, k]||_2 * sigma_k * eps_k,
with B x K x d noise instead of B x L_v x K x d. In training with uncertainty on, S
such samples are drawn with the "sample" rng; in evaluation (or uncertainty off)
u_k = mu_k and S = 1, with no rng needed.

Everything here runs in float32: it is tiny (K regions) and exp(log sigma^2) is where
bfloat16 would overflow first.
"""
import flax.linen as nn
import jax
import jax.numpy as jnp

from gralign_jax.models import layers


class RegionPrompts(nn.Module):
  """V_hat (B, Lv, d), mask (B, Lv) bool -> dict of regions (see __call__)."""
  num_regions: int
  logvar_hidden: int
  uncertainty: bool = True
  num_samples: int = 1

  @nn.compact
  def __call__(self, v_hat: jax.Array, mask: jax.Array,
               train: bool = False) -> dict[str, jax.Array]:
    """Returns {"regions": U (B, S, K, d), "region_mu": (B, K, d),
    "region_logvar": (B, K, d), "assign": A_hat (B, Lv, K)}."""
    v_hat = v_hat.astype(jnp.float32)
    d = v_hat.shape[-1]
    prompts = self.param("prompts", nn.initializers.normal(1.0), (self.num_regions, d))
    a = jax.nn.sigmoid(jnp.einsum("bld,kd->blk", v_hat, layers.l2_normalize(prompts)))
    a = jnp.where(mask[..., None], a, 0.0)
    # sigmoid > 0, so every column of a valid image has a positive sum.
    a_hat = a / jnp.maximum(jnp.sum(a, axis=1, keepdims=True), 1e-12)
    mu = jnp.einsum("blk,bld->bkd", a_hat, v_hat)
    h = layers.gelu(nn.Dense(self.logvar_hidden, name="logvar_fc1")(mu))
    logvar = nn.Dense(d, name="logvar_fc2")(h)
    if train and self.uncertainty:
      scale = jnp.sqrt(jnp.sum(jnp.square(a_hat), axis=1))[..., None]  # (B, K, 1)
      eps = jax.random.normal(self.make_rng("sample"),
                              (mu.shape[0], self.num_samples) + mu.shape[1:])
      u = mu[:, None] + (scale * jnp.exp(0.5 * logvar))[:, None] * eps
    else:
      u = mu[:, None]
    return {"regions": u, "region_mu": mu, "region_logvar": logvar, "assign": a_hat}

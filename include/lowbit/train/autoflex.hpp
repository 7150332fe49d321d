// Flexpoint's Autoflex exponent manager (Koster et al., NeurIPS 2017; docs/formats.md §1.5): predicts the
// shared exponent of a flexN+E tensor for its next use from a history of its maxima, so that the
// output scale can be fixed before the op runs. Scales are kappa = 2^k; a value is mantissa * kappa.
#pragma once

#include <cstdint>
#include <deque>

namespace lowbit {

struct autoflex_config {
  int mantissa_bits = 16;  // N of flexN+E
  int exponent_bits = 5;   // E of flexN+E: k is an E-bit two's complement integer
  double alpha = 2;        // multiplicative headroom
  double beta = 3;         // standard deviations of headroom
  double gamma = 100;      // additive headroom, in mantissa units
  int window = 16;         // l: length of the maxima history
};

class autoflex {
 public:
  explicit autoflex(autoflex_config cfg = {});

  // Current scale exponent k (kappa = 2^k).
  int exponent() const { return k_; }
  double kappa() const;

  // Algorithm 1 (initialisation by trial): given the max |mantissa| Gamma that the op produced
  // under the current exponent, returns true when the exponent is accepted; otherwise adjusts
  // it (a jump up on overflow, straight to the target on under-use) and asks for a retry.
  bool initialize_step(double gamma_max_mantissa);

  // Algorithm 2 (prediction): after each use, feed Gamma = max |mantissa| the kernel returned;
  // the manager records Gamma * kappa, predicts the next maximum and sets the exponent for the
  // next use. Returns the new exponent.
  int update(double gamma_max_mantissa);

  // Whether the last update saw an overflow (Gamma >= 2^(N-1) - 1) and cleared the history.
  bool last_overflowed() const { return overflowed_; }
  const std::deque<double>& history() const { return maxima_; }
  // Restores a saved state (checkpoints): the exponent and the maxima history, oldest first.
  void restore(int exponent, std::deque<double> history) {
    k_ = exponent;
    maxima_ = std::move(history);
  }

  // The smallest exponent (in the E-bit range) with chi <= (2^(N-1) - 1) * 2^k, i.e.
  // ceil(log2(chi / (2^(N-1) - 1))): chi lands at the top of the mantissa range without
  // overflowing it (ceil(log2 chi) - (N - 1) would overflow by one at chi in (2^(N-1)-1, 2^(N-1)]).
  int exponent_for_max(double chi) const;

 private:
  autoflex_config cfg_;
  int k_ = 0;
  bool overflowed_ = false;
  std::deque<double> maxima_;
};

}  // namespace lowbit

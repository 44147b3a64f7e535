// Preference losses on sequence log-probabilities against the formulas written out independently
// here (LN-DPO with delta = 0 is -log sigmoid of the scaled margin, APO-zero alone, LOGO with M = 1
// and lambda = 0 is SimPO), and every gradient against central finite differences.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "test_util.h"
#include "trainer/losses/preference_loss.h"

namespace cadtrain::trainer {
namespace {

double sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

TEST(LnPreferenceLoss, DeltaZeroIsMinusLogSigmoidOfTheScaledMargin) {
  LnPreferenceOptions o;
  o.beta = 2.0;
  o.margin = 0.3;
  const LnPreferenceResult r = ln_preference_loss(-12.0, -14.0, 4, -20.0, -18.0, 5, o);
  const double r_w = (-12.0 + 14.0) / 4, r_l = (-20.0 + 18.0) / 5;  // 0.5, -0.4
  EXPECT_NEAR(r.loss, -std::log(sig(2.0 * (r_w - r_l) - 0.3)), 1e-12);
  EXPECT_NEAR(r.reward_chosen, 1.0, 1e-12);
  EXPECT_NEAR(r.reward_rejected, -0.8, 1e-12);
}

TEST(LnPreferenceLoss, ApoZeroAloneAndTheCombination) {
  LnPreferenceOptions o;
  o.beta = 1.5;
  o.dpo_term = false;
  o.delta = 1.0;
  const double r_w = (-3.0 + 4.0) / 2, r_l = (-9.0 + 7.0) / 4;
  const LnPreferenceResult apo = ln_preference_loss(-3.0, -4.0, 2, -9.0, -7.0, 4, o);
  EXPECT_NEAR(apo.loss, (1 - sig(1.5 * r_w)) + sig(1.5 * r_l), 1e-12);
  o.dpo_term = true;
  o.delta = 0.25;
  const LnPreferenceResult both = ln_preference_loss(-3.0, -4.0, 2, -9.0, -7.0, 4, o);
  EXPECT_NEAR(both.loss, -std::log(sig(1.5 * (r_w - r_l))) + 0.25 * ((1 - sig(1.5 * r_w)) + sig(1.5 * r_l)), 1e-12);
}

TEST(LnPreferenceLoss, GradientsMatchFiniteDifferencesAndLargeMarginsStayFinite) {
  LnPreferenceOptions o;
  o.beta = 0.7;
  o.margin = 0.2;
  o.delta = 0.4;
  const double lw = -30, rw = -31, ll = -25, rl = -22;
  const LnPreferenceResult r = ln_preference_loss(lw, rw, 7, ll, rl, 3, o);
  const double eps = 1e-5;
  auto loss = [&](double a, double b) { return ln_preference_loss(a, rw, 7, b, rl, 3, o).loss; };
  EXPECT_NEAR(r.d_logp_chosen, (loss(lw + eps, ll) - loss(lw - eps, ll)) / (2 * eps), 1e-8);
  EXPECT_NEAR(r.d_logp_rejected, (loss(lw, ll + eps) - loss(lw, ll - eps)) / (2 * eps), 1e-8);
  // A margin of thousands: -log sigmoid saturates to 0 or to the margin itself, never inf or NaN.
  const LnPreferenceResult far = ln_preference_loss(0, -5000, 1, 0, 0, 1, o);
  EXPECT_TRUE(std::isfinite(far.loss));
  const LnPreferenceResult wrong = ln_preference_loss(0, 0, 1, 0, -5000, 1, o);
  EXPECT_NEAR(wrong.loss, 0.7 * 5000 + 0.2 + 0.4 * (1 - 0.5 + 1), 1e-6);
  EXPECT_NE(test::error_of([&] { ln_preference_loss(0, 0, 0, 0, 0, 1, o); }).find("0 tokens"), std::string::npos);
}

TEST(LogoLoss, OneRejectedAndNoSftTermIsSimPo) {
  LogoOptions o;
  o.beta = 10;
  o.gamma = 3;
  o.lambda = 0;
  const std::vector<double> rej = {-40.0};
  const std::vector<int64_t> len = {8};
  const LogoResult r = logo_loss(-12.0, 6, rej, len, o);
  EXPECT_NEAR(r.loss, -std::log(sig(10.0 * -12.0 / 6 - 10.0 * -40.0 / 8 - 3)), 1e-12);
}

TEST(LogoLoss, SeveralRejectedWithTheSftTermAndGradients) {
  LogoOptions o;  // defaults: beta 10, gamma 3, lambda 0.1
  const double lw = -20;
  std::vector<double> rej = {-30.0, -18.0, -50.0};
  const std::vector<int64_t> len = {6, 3, 10};
  const LogoResult r = logo_loss(lw, 5, rej, len, o);
  const double u = 10.0 * lw / 5 - 10.0 / 3 * (-30.0 / 6 - 18.0 / 3 - 50.0 / 10) - 3;
  EXPECT_NEAR(r.loss, -std::log(sig(u)) + 0.1 * (20.0 / 5), 1e-9);
  EXPECT_NEAR(r.sft, 4.0, 1e-12);
  const double eps = 1e-5;
  auto loss = [&](double w, const std::vector<double>& l) { return logo_loss(w, 5, l, len, o).loss; };
  EXPECT_NEAR(r.d_logp_chosen, (loss(lw + eps, rej) - loss(lw - eps, rej)) / (2 * eps), 1e-7);
  for (size_t j = 0; j < rej.size(); ++j) {
    std::vector<double> up = rej, down = rej;
    up[j] += eps;
    down[j] -= eps;
    EXPECT_NEAR(r.d_logp_rejected[j], (loss(lw, up) - loss(lw, down)) / (2 * eps), 1e-7) << "rejected " << j;
  }
  EXPECT_NE(test::error_of([&] { logo_loss(lw, 5, rej, std::vector<int64_t>{6}, o); }).find("3 rejected"),
            std::string::npos);
}

}  // namespace
}  // namespace cadtrain::trainer

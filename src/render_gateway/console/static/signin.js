// Sign in: keep the credential in this tab's session, check it against GET /me, then go to the
// first page this caller may use.
import { api, problem, signIn, token, ApiFailure } from "./console.js";

const form = document.getElementById("sign-in");

async function enter() {
  const me = await api("/me");
  location.assign(me.admin ? "/console/overview" : "/console/jobs");
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  signIn(document.getElementById("token").value);
  try {
    await enter();
  } catch (error) {
    problem(error instanceof ApiFailure ? error : new Error("the gateway could not be reached"));
  }
});

if (new URLSearchParams(location.search).has("expired")) {
  problem(new ApiFailure(401, "unauthenticated", "the credential was refused; sign in again"));
} else if (token()) {
  enter().catch(problem);
}

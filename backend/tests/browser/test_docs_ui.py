"""The API reference at /docs: Swagger UI renders every operation of /openapi.json under
the site's Content-Security-Policy, with no violation and no error in the console."""

from __future__ import annotations

from pathlib import Path

from playwright.async_api import expect

from tests.browser.support import NewContext, shoot
from tests.helpers import Node

# Runs before the page's own scripts: keeps every CSP violation the page meets.
RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`);
});
"""

# The document holds far more; fewer would mean operations failed to render.
MIN_OPERATIONS = 60


async def test_docs_render_every_operation_without_a_policy_violation(
    new_context: NewContext, web_node: Node, artifacts: Path
) -> None:
    context = await new_context(notifications=False)
    await context.add_init_script(RECORD_VIOLATIONS)
    page = await context.new_page()
    problems: list[str] = []
    page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: problems.append(str(e)))

    await page.goto(web_node.url + "/docs")
    operations = page.locator(".opblock")
    await expect(operations.nth(MIN_OPERATIONS - 1)).to_be_attached()
    assert await operations.count() >= MIN_OPERATIONS
    await expect(page.locator(".information-container .title")).to_contain_text("Messenger")
    await shoot(page, artifacts, "docs")

    violations = await page.evaluate("window.__cspViolations")
    assert violations == [], violations
    assert problems == [], problems

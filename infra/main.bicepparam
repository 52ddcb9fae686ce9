// Parameters for infra/main.bicep. Edit the values below, then:
//   az deployment group create -g <rg> -f infra/main.bicep -p infra/main.bicepparam
// Tokens are read from the environment at deploy time; never write one into this file. Both token
// parameters are optional: a deployment without them leaves the secrets in Key Vault as they are
// (set them there with `az keyvault secret set`, see docs/DEPLOY.md).
using './main.bicep'

param workspaceName = 'my-sentinel-workspace'

// Uncomment if the workspace lives in another resource group of the same subscription.
// param workspaceResourceGroupName = 'my-sentinel-rg'

param pulumiOrgs = [
  'my-pulumi-org'
]

// One token for every org without a token of its own (secret pulumi-access-token). A variable
// other than PULUMI_ACCESS_TOKEN, so a personal CLI token is never picked up by mistake.
param pulumiAccessToken = readEnvironmentVariable('PULUMI_AUDIT_TOKEN', '')

// Each org's own organization access token (secret pulumi-token-<org>), one line per org; every
// deployment with a line writes a new secret version, so comment it out again afterwards.
param pulumiOrgTokens = {
  // 'my-pulumi-org': readEnvironmentVariable('PULUMI_AUDIT_TOKEN_MY_PULUMI_ORG')
}

param pulumiApiUrl = 'https://api.pulumi.com'

// Every minute (NCRONTAB, 6 fields); each run reads only what is new since the checkpoint.
param timerSchedule = '0 * * * * *'

param initialLookback = '1d'

param tableRetentionInDays = 90

param tableTotalRetentionInDays = 365

param deployAnalyticRules = true

// The connector's health rules, Data connectors page entry, workbook, ASIM parser and hunting queries.
param deployHealthRules = true
param deployDataConnector = true
param deployWorkbook = true
param deployAsimParser = true
param deployHuntingQueries = true

// Set to true only if Microsoft Sentinel is not enabled on the workspace yet.
param onboardSentinel = false

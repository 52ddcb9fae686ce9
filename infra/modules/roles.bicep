// Role assignments of the connector's user-assigned managed identity.
//
// Each role is granted on the single resource that needs it, never on the resource group.
// No Storage Queue role: the app has only a timer trigger, which the host coordinates with blob
// leases, so nothing reads or writes queues.

@description('Principal (object) id of the user-assigned managed identity.')
param principalId string

param dcrName string
param storageAccountName string
param keyVaultName string
param appInsightsName string

// Built-in role definition ids.
var monitoringMetricsPublisher = '3913510d-42f4-4e42-8a64-420c390055eb'
var storageBlobDataOwner = 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
var storageTableDataContributor = '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
var keyVaultSecretsUser = '4633458b-17de-408a-b874-0445c86b69e6'

resource dcr 'Microsoft.Insights/dataCollectionRules@2023-03-11' existing = {
  name: dcrName
}

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource keyVault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource appInsights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: appInsightsName
}

// Send rows to the Logs Ingestion API through this DCR only.
resource dcrMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(dcr.id, principalId, monitoringMetricsPublisher)
  scope: dcr
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Pulumi audit connector: upload rows to the Logs Ingestion API through this DCR.'
  }
}

// Functions host storage (timer blob leases, host secrets) and the Flex deployment package container.
resource storageBlobOwner 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageBlobDataOwner)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageBlobDataOwner)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Pulumi audit connector: Functions host blobs and the Flex deployment package.'
  }
}

// Checkpoint and dead-letter tables (and the host's own diagnostic-events table) in this account.
resource storageTableContributor 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(storage.id, principalId, storageTableDataContributor)
  scope: storage
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', storageTableDataContributor)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Pulumi audit connector: checkpoint and dead-letter tables.'
  }
}

// Read each org's Pulumi token from this vault at run time (PULUMI_TOKEN_VAULT_URL).
resource keyVaultSecretsReader 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(keyVault.id, principalId, keyVaultSecretsUser)
  scope: keyVault
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', keyVaultSecretsUser)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Pulumi audit connector: read the Pulumi token secrets.'
  }
}

// Send telemetry to Application Insights with Entra ID auth (local auth is disabled there).
resource appInsightsMetricsPublisher 'Microsoft.Authorization/roleAssignments@2022-04-01' = {
  name: guid(appInsights.id, principalId, monitoringMetricsPublisher)
  scope: appInsights
  properties: {
    roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', monitoringMetricsPublisher)
    principalId: principalId
    principalType: 'ServicePrincipal'
    description: 'Pulumi audit connector: Entra ID-authenticated telemetry.'
  }
}
